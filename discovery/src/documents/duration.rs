//! Duration fields of documents, written as text (`250ms`, `2s`, `1.5m`,
//! `1h`, the form the schema's `duration` pattern accepts) and parsed by the
//! one parser of `weft-rules`.

/// serde support: a duration field written as a string.
pub(crate) mod text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        weft_rules::duration::parse(&text).map_err(serde::de::Error::custom)
    }

    pub fn deserialize_option<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        deserialize(deserializer).map(Some)
    }
}
