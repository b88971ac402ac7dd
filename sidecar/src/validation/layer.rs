//! The tower layer: judges a request against the policy it hands over
//! ([`ValidationTarget`]), and refuses it with every failing field, or
//! sends it on (with its body buffered, when the policy reads the body).

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::Either;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use jsonschema::Validator;
use serde_json::{Map, Value, json};
use tower::{Layer, Service};

use super::metrics::{Counts, INBOUND, OUTBOUND};
use super::policy::ValidationPolicy;
use crate::body::{BufferedBody, RequestBody};
use crate::error::{ErrorKind, ProxyError};
use crate::model::{BoxFuture, Exchange, ProxyResponse};

/// What validation reads of a request beyond [`Exchange`]: the policy that
/// applies to it (its route's, or its service's), if any.
pub trait ValidationTarget: Exchange {
    fn validation_policy(&self) -> Option<&Arc<ValidationPolicy>>;
}

#[derive(Clone, Copy)]
pub struct ValidationLayer {
    counts: &'static Counts,
}

impl ValidationLayer {
    /// Route policies, on the app's calls out.
    pub fn outbound() -> Self {
        Self { counts: &OUTBOUND }
    }

    /// The service's policy, on calls to the app.
    pub fn inbound() -> Self {
        Self { counts: &INBOUND }
    }
}

impl<S> Layer<S> for ValidationLayer {
    type Service = ValidationService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ValidationService {
            inner,
            counts: self.counts,
        }
    }
}

#[derive(Clone)]
pub struct ValidationService<S> {
    inner: S,
    counts: &'static Counts,
}

impl<S, R> Service<R> for ValidationService<S>
where
    R: ValidationTarget,
    S: Service<R, Response = ProxyResponse, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = ProxyResponse;
    type Error = ProxyError;
    /// A request no policy covers (or whose body no schema reads, once its
    /// query and headers pass) goes on in the inner future itself, so an
    /// unconfigured route pays one `None` check and no larger future; one
    /// whose body is read is boxed.
    type Future = Either<S::Future, BoxFuture>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: R) -> Self::Future {
        let Some(policy) = req.validation_policy() else {
            return Either::Left(self.inner.call(req));
        };
        let policy = policy.clone();
        let counts = self.counts;
        let mut failures = Vec::new();
        if let Some(schema) = &policy.query {
            check(schema, &query_object(req.http()), "query", &mut failures);
        }
        if let Some(schema) = &policy.headers {
            let headers = header_object(req.http(), &policy.header_names);
            check(schema, &headers, "header", &mut failures);
        }
        if policy.body.is_none() {
            if !failures.is_empty() {
                counts.judged(false);
                let error = invalid(failures);
                return Either::Right(Box::pin(async move { Err(error) }));
            }
            counts.judged(true);
            return Either::Left(self.inner.call(req));
        }
        // Take the ready service for this request (tower's clone-and-swap),
        // leaving a fresh clone behind: the body is read first.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Either::Right(Box::pin(async move {
            let body = std::mem::replace(
                req.http_mut().body_mut(),
                RequestBody::Buffered(BufferedBody::default()),
            );
            let buffered = match read_body(body, policy.max_body_bytes).await {
                Ok(buffered) => buffered,
                Err(error) => {
                    counts.judged(false);
                    return Err(error);
                }
            };
            if let Err(error) = judge_body(&policy, req.http(), &buffered, &mut failures) {
                counts.judged(false);
                return Err(error);
            }
            if !failures.is_empty() {
                counts.judged(false);
                return Err(invalid(failures));
            }
            counts.judged(true);
            *req.http_mut().body_mut() = RequestBody::Buffered(buffered);
            inner.call(req).await
        }))
    }
}

/// One failing field, as the problem document lists it.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Failure {
    /// `body`, `query` or `header`.
    pub(super) place: &'static str,
    /// A JSON pointer into the body, or a parameter's or header's name.
    pub(super) field: String,
    pub(super) reason: String,
}

/// Every error `schema` finds in `instance`, each at its field: a JSON
/// pointer in a body (a missing or unexpected property's own); in the
/// query's or headers' object, the name of the
/// parameter or header (a missing required one is named by its error's
/// own property, since its path is the object itself).
fn check(schema: &Validator, instance: &Value, place: &'static str, out: &mut Vec<Failure>) {
    for error in schema.iter_errors(instance) {
        let pointer = error.instance_path.to_string();
        let field = if place == "body" {
            // A missing or unexpected property is named by its own pointer,
            // not its object's: `/email`, not `` (the document itself).
            match missing_property(&error).or_else(|| unexpected_property(&error)) {
                Some(property) => format!(
                    "{pointer}/{}",
                    property.replace('~', "~0").replace('/', "~1")
                ),
                None => pointer,
            }
        } else {
            let name = pointer.trim_start_matches('/');
            let name = name.split('/').next().unwrap_or("");
            if name.is_empty() {
                missing_property(&error).unwrap_or_default()
            } else {
                name.replace("~1", "/").replace("~0", "~")
            }
        };
        out.push(Failure {
            place,
            field,
            reason: error.to_string(),
        });
    }
}

/// The property a `required` error is about.
fn missing_property(error: &jsonschema::ValidationError<'_>) -> Option<String> {
    match &error.kind {
        jsonschema::error::ValidationErrorKind::Required { property } => {
            property.as_str().map(str::to_owned)
        }
        _ => None,
    }
}

/// The one property an `additionalProperties: false` error is about (with
/// several, the object itself is named).
fn unexpected_property(error: &jsonschema::ValidationError<'_>) -> Option<String> {
    match &error.kind {
        jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected }
            if unexpected.len() == 1 =>
        {
            unexpected.first().cloned()
        }
        _ => None,
    }
}

/// The query parameters as an object of strings; a repeated parameter
/// counts with its first value (as most frameworks read a scalar).
fn query_object(http: &Request<RequestBody>) -> Value {
    let mut object = Map::new();
    let query = http.uri().query().unwrap_or("");
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        object
            .entry(name.into_owned())
            .or_insert_with(|| Value::String(value.into_owned()));
    }
    Value::Object(object)
}

/// The headers a header schema names, as an object of strings (the first
/// value of a repeated one). A value that is not visible ASCII is passed
/// as its lossy UTF-8 reading.
fn header_object(http: &Request<RequestBody>, names: &[http::HeaderName]) -> Value {
    let mut object = Map::new();
    for name in names {
        if let Some(value) = http.headers().get(name) {
            let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
            object.insert(name.as_str().to_owned(), Value::String(text));
        }
    }
    Value::Object(object)
}

/// The request body in memory, up to `limit` bytes; a larger one is
/// refused with 413 before more of it is read.
async fn read_body(body: RequestBody, limit: usize) -> Result<BufferedBody, ProxyError> {
    let too_large = || {
        problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {limit} bytes"),
            Vec::new(),
        )
    };
    if let RequestBody::Buffered(buffered) = body {
        let len = buffered.data.as_ref().map_or(0, Bytes::len);
        return if len > limit {
            Err(too_large())
        } else {
            Ok(buffered)
        };
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => {
            let trailers = collected.trailers().cloned().map(Box::new);
            let data = collected.to_bytes();
            Ok(BufferedBody {
                data: (!data.is_empty()).then_some(data),
                trailers,
            })
        }
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(error) => Err(ProxyError::new(
            ErrorKind::BadRequest,
            "the request body ended with an error",
        )
        .with_cause(error)),
    }
}

/// The body judged against the policy's body schema, its failures added
/// to `failures`; a body of another media type (415) or not JSON (400)
/// is refused at once.
fn judge_body(
    policy: &ValidationPolicy,
    http: &Request<RequestBody>,
    body: &BufferedBody,
    failures: &mut Vec<Failure>,
) -> Result<(), ProxyError> {
    let Some(schema) = &policy.body else {
        return Ok(());
    };
    let bytes = body.data.clone().unwrap_or_default();
    if bytes.is_empty() && http.headers().get(CONTENT_TYPE).is_none() {
        // No body at all: judged as JSON `null`, so a schema that wants an
        // object names the missing body.
        check(schema, &Value::Null, "body", failures);
        return Ok(());
    }
    if !is_json(http.headers().get(CONTENT_TYPE)) {
        return Err(problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the request body must be sent as application/json".to_owned(),
            Vec::new(),
        ));
    }
    let value: Value = match serde_json::from_slice(&bytes) {
        Ok(value) => value,
        Err(error) => {
            return Err(problem(
                StatusCode::BAD_REQUEST,
                format!("the request body is not JSON: {error}"),
                Vec::new(),
            ));
        }
    };
    check(schema, &value, "body", failures);
    Ok(())
}

/// `application/json`, or any `+json` type, parameters left out.
fn is_json(content_type: Option<&HeaderValue>) -> bool {
    let Some(value) = content_type.and_then(|value| value.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json") || subtype.to_ascii_lowercase().ends_with("+json"))
}

/// The 400 for failing fields.
fn invalid(failures: Vec<Failure>) -> ProxyError {
    let detail = match failures.len() {
        1 => "1 field of the request is invalid".to_owned(),
        n => format!("{n} fields of the request are invalid"),
    };
    problem(StatusCode::BAD_REQUEST, detail, failures)
}

/// A refusal answered as an RFC 9457 problem document.
pub(super) fn problem(status: StatusCode, detail: String, failures: Vec<Failure>) -> ProxyError {
    let title = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "Request body too large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "Unsupported request media type",
        _ => "Request validation failed",
    };
    let errors: Vec<Value> = failures
        .iter()
        .map(|f| json!({"in": f.place, "field": f.field, "reason": f.reason}))
        .collect();
    let document = json!({
        "type": "about:blank",
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
        "errors": errors,
    });
    ProxyError::new(ErrorKind::ValidationFailed { status }, detail).with_body(
        HeaderValue::from_static("application/problem+json"),
        Bytes::from(document.to_string()),
    )
}
