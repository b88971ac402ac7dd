//! Policy documents (`policies/<service>`): the inbound policy of a service.
//! Empty for now; the authorization and rate-limit issues add fields. Unknown
//! fields are rejected so that a policy written for a newer agent is not
//! silently ignored by an older one.

use serde::Deserialize;
use serde_json::Value;

use super::error::{FieldError, from_serde};
use super::{DocumentKind, schema};

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {}

pub(super) fn parse(key: &str, value: &Value) -> Result<PolicyDocument, Vec<FieldError>> {
    let errors = schema::validate(key, DocumentKind::Policy, value);
    if !errors.is_empty() {
        return Err(errors);
    }
    serde_path_to_error::deserialize(value).map_err(|error| vec![from_serde(key, "", error)])
}
