//! The command-line loop Hull's tools share: `--help` and `--version` answered at once, every
//! other argument handed to the tool, a flag's value taken from the next argument.

use std::slice::Iter;

/// What was wrong with the command line.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    #[error("{0} needs a value (see --help)")]
    NeedsValue(String),
    #[error("unknown argument {0:?} (see --help)")]
    Unknown(String),
}

/// The arguments after the one being handled: a flag takes its value from here.
pub struct Rest<'a, 'b> {
    flag: &'a str,
    it: &'b mut Iter<'a, String>,
}

impl<'a> Rest<'a, '_> {
    /// The flag's value: the next argument.
    pub fn value(&mut self) -> Result<&'a String, ArgsError> {
        self.it
            .next()
            .ok_or_else(|| ArgsError::NeedsValue(self.flag.to_string()))
    }

    /// The error for an argument the tool does not take (here).
    pub fn unknown(&self) -> ArgsError {
        ArgsError::Unknown(self.flag.to_string())
    }
}

/// Walks `args` (without the program name): `--help`/`-h` prints `help`, `--version` prints
/// `name`'s version line; both end the walk with `Ok(false)` (nothing to run). Every other
/// argument goes to `on_arg` with the rest of the line. `Ok(true)`: the tool runs.
pub fn parse<'a>(
    name: &str,
    help: &str,
    args: &'a [String],
    mut on_arg: impl FnMut(&'a str, &mut Rest<'a, '_>) -> Result<(), ArgsError>,
) -> Result<bool, ArgsError> {
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--help" | "-h" => {
                print!("{help}");
                return Ok(false);
            }
            "--version" => {
                println!("{}", crate::version_line(name));
                return Ok(false);
            }
            flag => on_arg(flag, &mut Rest { flag, it: &mut it })?,
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    /// A tool with `--out VALUE` and a `sub` word: what it saw.
    fn tool(words: &[&str]) -> Result<(bool, Vec<String>), ArgsError> {
        let args = line(words);
        let mut seen = Vec::new();
        let run = parse("hull-test", "help text\n", &args, |arg, rest| {
            match arg {
                "--out" => seen.push(format!("out={}", rest.value()?)),
                "sub" => seen.push("sub".into()),
                _ => return Err(rest.unknown()),
            }
            Ok(())
        })?;
        Ok((run, seen))
    }

    #[test]
    fn flags_and_words_reach_the_tool_in_order() {
        assert_eq!(tool(&[]), Ok((true, vec![])));
        assert_eq!(
            tool(&["sub", "--out", "x", "--out", "--help"]),
            Ok((true, line(&["sub", "out=x", "out=--help"])))
        );
    }

    #[test]
    fn help_and_version_end_the_walk_without_running() {
        assert_eq!(tool(&["--help", "--bogus"]), Ok((false, vec![])));
        assert_eq!(tool(&["-h"]), Ok((false, vec![])));
        assert_eq!(tool(&["sub", "--version"]), Ok((false, line(&["sub"]))));
    }

    #[test]
    fn a_missing_value_or_an_unknown_argument_says_what_and_where_to_look() {
        let err = tool(&["sub", "--out"]).unwrap_err();
        assert_eq!(err, ArgsError::NeedsValue("--out".into()));
        assert_eq!(err.to_string(), "--out needs a value (see --help)");
        let err = tool(&["--bogus", "--help"]).unwrap_err();
        assert_eq!(err.to_string(), "unknown argument \"--bogus\" (see --help)");
    }
}
