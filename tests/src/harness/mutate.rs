//! A small seeded mutator for fuzzing real listeners in bounded time:
//! bit flips, interesting bytes, dictionary tokens, deleted, duplicated
//! and truncated ranges, applied to a corpus of known-bad inputs
//! (smuggling pipelines, malformed HTTP/2 frames). cargo-fuzz needs
//! nightly and cargo-afl an LLVM matching rustc's (docs/CONFORMANCE.md);
//! this runs on stable, against the real processes, in a few seconds.

use rand::Rng;

/// Bytes that change how HTTP parses what surrounds them.
const INTERESTING: &[u8] = b" \t\r\n:,;\0\x7f\xff0\x80";

/// Turns `input` into a variant by 1 to 4 random edits; `dictionary`
/// holds tokens worth inserting whole (field lines, codings, frames).
pub fn mutate(rng: &mut impl Rng, input: &[u8], dictionary: &[&[u8]]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let at = rng.random_range(0..=out.len());
        match rng.random_range(0..6) {
            0 if at < out.len() => out[at] ^= 1 << rng.random_range(0..8),
            1 if at < out.len() => out[at] = INTERESTING[rng.random_range(0..INTERESTING.len())],
            2 if !dictionary.is_empty() => {
                let token = dictionary[rng.random_range(0..dictionary.len())];
                out.splice(at..at, token.iter().copied());
            }
            3 => {
                let end = (at + rng.random_range(1..=8)).min(out.len());
                out.drain(at..end);
            }
            4 => {
                let end = (at + rng.random_range(1..=32)).min(out.len());
                let copy = out[at..end].to_vec();
                out.splice(at..at, copy);
            }
            _ => out.truncate(at.max(1)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_same_seed_makes_the_same_variants() {
        let variants = |seed| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            (0..20)
                .map(|_| mutate(&mut rng, b"GET / HTTP/1.1\r\n\r\n", &[b"Host: a\r\n"]))
                .collect::<Vec<_>>()
        };
        assert_eq!(variants(7), variants(7));
        assert!(variants(7).iter().any(|v| v != b"GET / HTTP/1.1\r\n\r\n"));
    }
}
