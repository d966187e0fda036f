//! `Secret`: a credential (S3 secret key, Swift key, vSphere or Cinder
//! password) that never shows itself in `Debug`, `Display` or logs; code that
//! really needs the value asks for it with [`Secret::expose`].

use std::fmt;

use serde::{Deserialize, Deserializer};

/// A string that prints as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The real value, for the one place that sends it to the server.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when the value is the empty string (an option left blank).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Secret {
        Secret(value.to_owned())
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Secret, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let s = Secret::new("hunter2".to_owned());
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some(***)");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn equality_and_clone_compare_the_value() {
        let a = Secret::from("k1");
        assert_eq!(a, a.clone());
        assert_ne!(a, Secret::from("k2"));
        assert!(Secret::from("").is_empty());
    }
}
