//! Text helpers for what goes into one-line messages: outside text made
//! printable, error chains folded onto one line.

/// Outside text (a value, a key) as it goes into a one-line error: control
/// characters escaped (`\n`, `\u{1b}`), so a newline or a terminal escape
/// sequence in a config value cannot break the line or the terminal.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// An error and its causes as `{e:#}` prints them (`outer: inner`), with
/// any line break inside a cause folded into a space.
pub fn chain(error: &anyhow::Error) -> String {
    format!("{error:#}").replace('\n', " ")
}

/// An error chain on one line, each cause once and only the first line of
/// each (a verifier log has hundreds): some errors repeat their source in
/// their own text.
pub fn one_line(error: &dyn std::error::Error) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(e) = source {
        parts.push(e.to_string());
        source = e.source();
    }
    let mut line = String::new();
    for part in &parts {
        let part = part.lines().next().unwrap_or("").trim();
        if part.is_empty() || line.contains(part) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(part);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chains_become_one_line_without_repeats() {
        let e = anyhow::anyhow!("verifier rejected\nline 2")
            .context("cannot load: verifier rejected")
            .context("loader");
        assert_eq!(
            one_line(e.as_ref()),
            "loader: cannot load: verifier rejected"
        );
    }

    #[test]
    fn chain_folds_line_breaks() {
        let e = anyhow::anyhow!("inner\nsecond line").context("outer");
        assert_eq!(chain(&e), "outer: inner second line");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("a\nb\u{1b}[2K"), "a\\nb\\u{1b}[2K");
        assert_eq!(printable("plain"), "plain");
    }
}
