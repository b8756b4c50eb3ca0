//! The one rule for container, exec and sandbox ids, checked by the shim
//! before a VM boots and again by the agent in the guest.
//!
//! The rule is containerd's own (its `identifiers` package): 1 to
//! [`MAX_ID_LEN`] bytes of ASCII letters and digits, in runs joined by single
//! `.`, `_` or `-` characters; no separator first, last or twice in a row.
//! Anything containerd accepts passes, and every id is a safe file, cgroup
//! and log-field name (no `/`, no spaces, no leading `.`).

/// Longest id accepted (containerd's limit).
pub const MAX_ID_LEN: usize = 76;

/// What kind of id was checked, for the error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    Container,
    Exec,
    Sandbox,
}

impl std::fmt::Display for IdKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IdKind::Container => "container",
            IdKind::Exec => "exec",
            IdKind::Sandbox => "sandbox",
        })
    }
}

/// An id that breaks the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{kind} id {id:?} is not valid: {reason} (ids are 1 to {MAX_ID_LEN} letters and digits, \
     joined by single '.', '_' or '-')"
)]
pub struct InvalidId {
    pub kind: IdKind,
    pub id: String,
    pub reason: &'static str,
}

/// Checks `id` against the rule above.
pub fn validate_id(kind: IdKind, id: &str) -> Result<(), InvalidId> {
    let bad = |reason| {
        Err(InvalidId {
            kind,
            // Bounded, so a hostile id cannot bloat the message.
            id: id.chars().take(MAX_ID_LEN + 4).collect(),
            reason,
        })
    };
    if id.is_empty() {
        return bad("it is empty");
    }
    if id.len() > MAX_ID_LEN {
        return bad("it is too long");
    }
    let mut previous_separator = true;
    for c in id.chars() {
        match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' => previous_separator = false,
            '.' | '_' | '-' if !previous_separator => previous_separator = true,
            '.' | '_' | '-' => return bad("a separator starts it or follows another"),
            _ => return bad("it holds a character other than a letter, digit, '.', '_' or '-'"),
        }
    }
    if previous_separator {
        return bad("it ends with a separator");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_style_ids_pass() {
        let longest = "a".repeat(MAX_ID_LEN);
        for ok in [
            "a",
            "t1",
            "web",
            "sh1",
            "exec-1",
            "pod_1.a-b",
            "A9",
            &longest,
        ] {
            assert_eq!(validate_id(IdKind::Container, ok), Ok(()), "{ok:?}");
        }
        // CRI ids: 64 hex digits.
        assert!(validate_id(IdKind::Sandbox, &"0123456789abcdef".repeat(4)).is_ok());
    }

    #[test]
    fn everything_else_is_refused_with_a_reason() {
        let too_long = "a".repeat(MAX_ID_LEN + 1);
        for bad in [
            "", "a b", "a/b", "..", ".hidden", "-x", "x-", "a--b", "a._b", "é", "a\0b", "a\nb",
            &too_long,
        ] {
            let err = validate_id(IdKind::Exec, bad).unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with("exec id "), "{msg}");
            assert!(msg.contains(err.reason), "{msg}");
        }
        let err = validate_id(IdKind::Container, &"x".repeat(10_000)).unwrap_err();
        assert!(err.to_string().len() < 400, "the message stays short");
    }
}
