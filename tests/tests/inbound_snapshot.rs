//! One inbound policy at a time, over real processes: users' KV policy
//! document flips between two versions that change its JWT rules and its
//! intentions together, while the client calls users without pause. The
//! sidecar publishes a policy as one value and each request is judged by
//! one snapshot of it, so no request may see the JWT rules of one version
//! with the intentions of the other.
//!
//! - A: a token is required (`jwt`), and the client is denied (intention).
//! - B: no JWT rules, and the client is allowed.
//!
//! JWT runs before the intentions, so each mix shows on one kind of call:
//! without a token, B's JWT rules with A's intentions answer 403 `denied`
//! (A says 401, B 200); with a valid token, A's JWT rules with B's
//! intentions let it through with the verified subject set as
//! `x-weft-jwt-sub` (A says 403, B's 200 has no verified subject).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use weft_e2e::harness::mesh::{SETUP_TIMEOUT, mtls_users_and_client};
use weft_e2e::{Call, Reply, eventually, run};

const ISSUER: &str = "https://idp.weft.test";

/// An Ed25519 key: a valid token for `alice`, and the key set that
/// verifies it.
fn token_and_key_set() -> anyhow::Result<(String, Value)> {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = json!({ "iss": ISSUER, "aud": "users", "sub": "alice",
                         "iat": now, "exp": now + 600 });
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("key-1".into());
    let token = jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_ed_der(&pair.serialize_der()),
    )?;
    let keys = json!({ "keys": [ { "kty": "OKP", "crv": "Ed25519", "kid": "key-1", "use": "sig",
                                   "x": URL_SAFE_NO_PAD.encode(pair.public_key_raw()) } ] });
    Ok((format!("Bearer {token}"), keys))
}

/// What a call saw of the policy, judged from its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    A,
    B,
    /// One version's JWT rules with the other's intentions.
    Mixed,
}

/// Judges a call without a token: A 401, B 200, mixed 403.
fn without_token(reply: &Reply) -> anyhow::Result<Seen> {
    Ok(match (reply.status.as_u16(), reply.weft_error()) {
        (401, Some("jwt-missing")) => Seen::A,
        (200, None) => Seen::B,
        (403, Some("denied")) => Seen::Mixed,
        (status, error) => bail!("no token: unexpected {status} {error:?}: {}", reply.text()),
    })
}

/// Judges a call with a valid token: A 403, B 200 without a verified
/// subject, mixed 200 with one.
fn with_token(reply: &Reply) -> anyhow::Result<Seen> {
    Ok(match (reply.status.as_u16(), reply.weft_error()) {
        (403, Some("denied")) => Seen::A,
        (200, None) => match reply.echo()?.header("x-weft-jwt-sub") {
            None => Seen::B,
            Some(_) => Seen::Mixed,
        },
        (status, error) => bail!("token: unexpected {status} {error:?}: {}", reply.text()),
    })
}

#[test]
fn authn_and_authz_flipped_together_under_traffic_are_never_seen_apart() {
    run(|ctx| async move {
        let (_ca, mesh, _users, client) = mtls_users_and_client(&ctx, "24h").await?;
        let (token, keys) = token_and_key_set()?;
        let a = json!({
            "intentions": [ { "source": "client", "action": "deny" } ],
            "jwt": { "providers": [ { "name": "idp", "issuer": ISSUER, "audiences": ["users"],
                                      "jwks": { "inline": keys } } ] } });
        let b = json!({ "intentions": [ { "source": "client", "action": "allow" } ] });

        let stop = Arc::new(AtomicBool::new(false));
        // Calls judged, by [A, B] and by with/without a token.
        let counts: Arc<[AtomicUsize; 4]> = Arc::new(Default::default());
        let mut callers = Vec::new();
        for caller in 0..4 {
            let (http, outbound) = (mesh.http.clone(), client.sidecar.outbound);
            let (stop, counts, token) = (stop.clone(), counts.clone(), token.clone());
            callers.push(tokio::spawn(async move {
                let carries_token = caller % 2 == 1;
                while !stop.load(Ordering::Relaxed) {
                    let authorization = [("authorization", token.as_str())];
                    let headers: &[(&str, &str)] = if carries_token { &authorization } else { &[] };
                    let reply = http
                        .call(outbound, Call::get("users", "/").headers(headers))
                        .await?;
                    let seen = if carries_token {
                        with_token(&reply)?
                    } else {
                        without_token(&reply)?
                    };
                    ensure!(
                        seen != Seen::Mixed,
                        "a request saw the JWT rules of one policy with the intentions of the \
                         other (token: {carries_token}): {} {:?}: {}",
                        reply.status,
                        reply.weft_error(),
                        reply.text()
                    );
                    let slot = usize::from(seen == Seen::B) * 2 + usize::from(carries_token);
                    counts[slot].fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(())
            }));
        }

        // Each flip waits until the new version answers, so every one of
        // them is swapped in under traffic.
        for flip in 0..20 {
            let (document, expected) = if flip % 2 == 0 { (&a, 401) } else { (&b, 200) };
            mesh.put_document("policies/users", document).await?;
            eventually(SETUP_TIMEOUT, &format!("policy flip {flip}"), || async {
                let reply = mesh
                    .http
                    .call(client.sidecar.outbound, Call::get("users", "/"))
                    .await?;
                ensure!(reply.status.as_u16() == expected, "got {}", reply.status);
                Ok(())
            })
            .await?;
            if callers.iter().any(|c| c.is_finished()) {
                break;
            }
        }
        // Some traffic after the last flip too.
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.store(true, Ordering::Relaxed);
        for caller in callers {
            caller.await??;
        }
        let [a_plain, a_token, b_plain, b_token] =
            std::array::from_fn::<usize, 4, _>(|i| counts[i].load(Ordering::Relaxed));
        println!(
            "calls judged: A {a_plain}/{a_token}, B {b_plain}/{b_token} (without/with a token)"
        );
        ensure!(
            a_plain > 0 && a_token > 0 && b_plain > 0 && b_token > 0,
            "the calls did not see both versions both ways: A {a_plain}/{a_token}, \
             B {b_plain}/{b_token} (without/with a token)"
        );
        Ok(())
    });
}
