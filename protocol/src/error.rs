//! One way to print an error with its causes, for every Hull binary: the
//! shim's ttrpc statuses, hull-vmm's exit messages and the agent's replies.

/// An error and its `source()` chain as one line: `outer: cause: root cause`.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("cannot start the VM")]
        Start(#[source] std::io::Error),
        #[error("plain")]
        Plain,
    }

    #[test]
    fn causes_are_joined_in_order() {
        let root = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        assert_eq!(
            chain(&Outer::Start(root)),
            "cannot start the VM: no such file"
        );
        assert_eq!(chain(&Outer::Plain), "plain");
    }
}
