//! Regexes of route, header, query and permission matchers.

use crate::limits::REGEX_SIZE_LIMIT;

/// Compiles `pattern` as every matcher uses it: anchored to match the whole
/// value, with the compiled program bounded by [`REGEX_SIZE_LIMIT`]. The
/// reason names the pattern and the problem on one line.
pub fn compile_full(pattern: &str) -> Result<::regex::Regex, String> {
    // The pattern alone first: anchoring could hide an unbalanced `a)(b`.
    ::regex::Regex::new(pattern)
        .and_then(|_| {
            ::regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
        })
        .map_err(|error| {
            let text = error.to_string();
            // The syntax error is several lines (pattern, caret, "error: ...");
            // one line reads better in logs, NACKs and tables.
            let detail = text
                .lines()
                .find_map(|line| line.strip_prefix("error: "))
                .map_or_else(|| text.replace('\n', " "), str::to_string);
            format!("invalid regex `{pattern}`: {detail}")
        })
}

/// [`compile_full`] for a check that needs no compiled regex.
pub fn check(pattern: &str) -> Result<(), String> {
    compile_full(pattern).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regexes_match_the_whole_value() {
        let re = compile_full("a|b").unwrap();
        assert!(re.is_match("a") && re.is_match("b"));
        assert!(!re.is_match("ab"));
    }

    #[test]
    fn bad_regexes_name_pattern_and_problem_on_one_line() {
        let reason = check("^/items/[0-9+$").unwrap_err();
        assert!(
            reason.starts_with("invalid regex `^/items/[0-9+$`: unclosed character class"),
            "{reason}"
        );
        assert!(!reason.contains('\n'));
        // Unbalanced in a way that anchoring would hide.
        assert!(check("a)(b").unwrap_err().contains("unopened group"));
        let reason = check(r"(\w{100}){100}").unwrap_err();
        assert!(reason.contains("exceeds size limit"), "{reason}");
    }
}
