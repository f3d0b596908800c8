//! Closed sets of values that are stored as text (an outcome, a ticket status, a quarantine
//! reason): one enum each, with one spelling of each value, so that no string is built or parsed
//! anywhere else. [`closed_set!`] writes the enum, its stored text, `Display`, `FromStr` and
//! `Serialize` (as the text) from one list.

/// A stored text that is none of its set's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {set} `{text}`")]
pub struct UnknownValue {
    /// What the set is called, e.g. "ticket status".
    pub set: &'static str,
    pub text: String,
}

/// `closed_set! { /// doc \n pub enum Name("what it is") { /// doc \n Variant = "text", … } }`
#[macro_export]
macro_rules! closed_set {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored text.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $name {
            /// The stored text (padded as asked, for column output).
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::closed_set::UnknownValue;

            fn from_str(text: &str) -> Result<$name, Self::Err> {
                match text {
                    $($text => Ok($name::$variant),)+
                    _ => Err($crate::closed_set::UnknownValue {
                        set: $what,
                        text: text.to_string(),
                    }),
                }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }
    };
}

#[cfg(test)]
mod tests {
    crate::closed_set! {
        /// A set for the test.
        pub enum Colour("colour") {
            Red = "red",
            /// With a doc comment.
            LightBlue = "light-blue",
        }
    }

    #[test]
    fn each_value_round_trips_through_its_text_and_others_are_refused() {
        for colour in Colour::ALL {
            assert_eq!(colour.as_str().parse::<Colour>(), Ok(*colour));
        }
        assert_eq!(Colour::LightBlue.to_string(), "light-blue");
        assert_eq!(format!("[{:<5}]", Colour::Red), "[red  ]");
        let error = "green".parse::<Colour>().unwrap_err();
        assert_eq!(error.to_string(), "unknown colour `green`");
        assert_eq!(serde_json::to_string(&Colour::Red).unwrap(), "\"red\"");
    }
}
