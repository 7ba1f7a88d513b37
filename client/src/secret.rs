//! [`Secret`]: a value that must never reach a log, an error message or a terminal.

use std::fmt;

/// A secret (a password-bearing URL, an account key, a SAS token, a connection string). Its
/// `Debug` and `Display` show a redacted form, so it can sit in any struct that is logged; the
/// value itself comes out only through [`expose`](Self::expose), where it is used.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself: pass it on, never print it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({self})")
    }
}

/// A URL shows with its password as `***` (where it has a user); anything else as `***`.
impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.split_once("://") {
            Some((scheme, rest)) if !scheme.is_empty() && !scheme.contains([';', '=']) => {
                f.write_str(&redact_url(scheme, rest))
            }
            _ => f.write_str("***"),
        }
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl From<&String> for Secret {
    fn from(value: &String) -> Self {
        Self(value.clone())
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(value.into())
    }
}

/// `scheme://rest` with everything between `://` and the last `@` but the user name replaced
/// by `***`, so a password holding `/` or `@` is hidden too; query parameters (which may carry
/// a token) are dropped.
fn redact_url(scheme: &str, rest: &str) -> String {
    let rest = rest.split_once('?').map_or(rest, |(before, _)| before);
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{scheme}://{user}:***@{host}")
        }
        None => format!("{scheme}://{rest}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_urls_without_their_password_and_everything_else_as_stars() {
        let shown = |value: &str| {
            (
                format!("{}", Secret::from(value)),
                format!("{:?}", Secret::from(value)),
            )
        };
        assert_eq!(
            shown("amqp://ember:p@ss/w:rd@rabbit:5672/%2f"),
            (
                "amqp://ember:***@rabbit:5672/%2f".to_owned(),
                "Secret(amqp://ember:***@rabbit:5672/%2f)".to_owned()
            )
        );
        assert_eq!(shown("amqp://rabbit/%2f").0, "amqp://rabbit/%2f");
        assert_eq!(
            shown("https://acct.blob.core.windows.net/c?sv=1&sig=abc").0,
            "https://acct.blob.core.windows.net/c"
        );
        for hidden in [
            "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=k==;BlobEndpoint=http://x",
            "c2VjcmV0IGtleQ==",
            "?sv=2022&sig=abc",
            "",
        ] {
            assert_eq!(shown(hidden).0, "***", "{hidden}");
        }
        assert_eq!(Secret::from("k").expose(), "k");
    }
}
