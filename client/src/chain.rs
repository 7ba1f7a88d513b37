//! Errors with their causes: a lower layer's error (lapin's, the HTTP client's, the file
//! system's) travels as the `source` of Ember's own, and [`Chain`] writes the whole chain where
//! a log or a reply needs one line.

use std::error::Error;
use std::fmt;

/// What caused an error: a lower layer's error, kept whole.
pub type Cause = Box<dyn Error + Send + Sync>;

/// Displays an error followed by each of its causes, `": "` between them:
/// `tracing::warn!(error = %Chain(&e), …)`.
#[derive(Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn writes_every_cause_in_order() {
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(Chain(&Outer(inner)).to_string(), "outer: refused");
        let alone = std::io::Error::other("alone");
        assert_eq!(Chain(&alone).to_string(), "alone");
    }
}
