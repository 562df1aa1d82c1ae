//! One handler per endpoint: check who may do it, turn the body into a
//! command, run it, answer with where the stream stands.

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use commands::Outcome;
use domain::customer::CustomerCommand;
use domain::order::{OrderAggregate, OrderCommand};
use domain::product::ProductCommand;
use edge::{JsonBody, Principal, Role, parse_id};
use eventlog::Metadata;
use serde_json::json;
use uuid::Uuid;

use crate::AppState;
use crate::dto;
use crate::error::ApiError;

/// What every command carries besides its body.
pub struct Ctx {
    pub principal: Option<Principal>,
    pub metadata: Metadata,
    pub if_match: Option<u64>,
}

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let headers = &parts.headers;
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let correlation_id =
            match headers.get("x-correlation-id") {
                Some(raw) => raw.to_str().ok().and_then(edge::request::parse_uuid).ok_or_else(|| {
                    ApiError::malformed("X-Correlation-Id", "must be a UUID such as 0190f3c4-0000-7000-8000-00000000a001")
                })?,
                None => Uuid::now_v7(),
            };
        let if_match = match headers.get(header::IF_MATCH) {
            None => None,
            Some(raw) => parse_if_match(raw)?,
        };
        let principal = parts.extensions.get::<Principal>().cloned();
        // The caller's trace goes on. Exporting spans, the request's span
        // (under the caller's, or the root of a new trace) is the parent;
        // otherwise a span of its own under the caller's trace, or (without
        // a valid one, which W3C says to ignore) the correlation id names a
        // new trace.
        let traceparent = telemetry::traceparent(&tracing::Span::current()).unwrap_or_else(|| {
            text("traceparent")
                .and_then(|raw| telemetry::w3c::parse(&raw))
                .map_or_else(|| telemetry::w3c::child(&correlation_id.simple().to_string(), true), |t| telemetry::w3c::child_of(&t))
        });
        let metadata = Metadata {
            actor: principal.as_ref().map_or_else(|| "system:payment-webhook".to_owned(), |p| p.sub.clone()),
            role: principal.as_ref().map(|p| p.role.as_str().to_owned()),
            correlation_id,
            causation_id: None,
            request_id: text("x-request-id"),
            idempotency_key: text(crate::idempotency::HEADER),
            traceparent: Some(traceparent),
        };
        tracing::Span::current().record("correlation_id", tracing::field::display(correlation_id));
        tracing::Span::current().record("trace_id", tracing::field::display(metadata.trace_id()));
        Ok(Ctx { principal, metadata, if_match })
    }
}

/// `*`, or the stream version as an entity tag, `"3"` or `W/"3"`: the
/// OpenAPI document's `IF_MATCH_PATTERN`, exactly.
fn parse_if_match(raw: &HeaderValue) -> Result<Option<u64>, ApiError> {
    let bad = || ApiError::malformed("If-Match", "must be * or an entity tag such as \"3\" (the stream version, at most 19 digits)");
    let raw = raw.to_str().map_err(|_| bad())?;
    // An empty value is as if the header were absent (RFC 9110 5.5).
    if raw == "*" || raw.is_empty() {
        return Ok(None);
    }
    let tag = raw.strip_prefix("W/").unwrap_or(raw);
    let version = tag.strip_prefix('"').and_then(|t| t.strip_suffix('"')).ok_or_else(bad)?;
    if !(1..=19).contains(&version.len()) || !version.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    version.parse().map(Some).map_err(|_| bad())
}

/// What `parse_if_match` takes.
pub const IF_MATCH_PATTERN: &str = r#"^(\*|(W/)?"[0-9]{1,19}")?$"#;

impl Ctx {
    fn principal(&self) -> &Principal {
        self.principal.as_ref().expect("authenticated routes always carry a principal")
    }
}

/// The success answer of every command.
fn respond(status: StatusCode, outcome: Outcome) -> Response {
    let token = edge::consistency::encode(outcome.position);
    tracing::info!(stream_id = %outcome.stream_id, version = outcome.version, position = outcome.position, appended = outcome.appended, "command handled");
    let body = json!({
        "id": outcome.id,
        "stream_id": outcome.stream_id,
        "version": outcome.version,
        "position": outcome.position,
        "consistency_token": token,
    });
    let mut response = (status, Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::ETAG, HeaderValue::from_str(&format!("\"{}\"", outcome.version)).expect("a number is a valid header"));
    headers.insert(edge::consistency::TOKEN_HEADER, edge::consistency::header_value(outcome.position));
    response
}

fn new_id(requested: Option<Uuid>) -> Uuid {
    requested.unwrap_or_else(Uuid::now_v7)
}

// --- customers ---

pub async fn register_customer(
    State(state): State<AppState>,
    ctx: Ctx,
    JsonBody(body): JsonBody<dto::RegisterCustomer>,
) -> Result<Response, ApiError> {
    let principal = ctx.principal();
    // A customer registers itself: its id is its token's subject.
    let id = match principal.role {
        Role::Admin => new_id(body.id),
        Role::Customer => {
            let own =
                Uuid::parse_str(&principal.sub).map_err(|_| ApiError::forbidden("a customer token's subject must be its customer id"))?;
            principal.require_customer(body.id.unwrap_or(own))?;
            own
        }
    };
    let password = body.password.clone();
    if let Some(password) = &password {
        dto::checked_password(password)?;
    }
    let command = CustomerCommand::try_from(dto::WithId(id, body))?;
    let outcome = state.accounts.register(id, command, password, ctx.if_match, &ctx.metadata).await?;
    Ok(respond(StatusCode::CREATED, outcome))
}

/// Sets a customer's sign-in password (the customer itself, or an admin).
pub async fn set_password(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ctx: Ctx,
    JsonBody(body): JsonBody<dto::SetPassword>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    ctx.principal().require_customer(id)?;
    dto::checked_password(&body.password)?;
    state.accounts.set_password(id, body.password).await?;
    Ok((StatusCode::OK, Json(json!({ "id": id }))).into_response())
}

/// Signs an operator (an admin token) or a customer in: a short-lived
/// access token for an email and password. An unknown email and a wrong
/// password get the same answer in about the same time: each sign-in checks
/// one password hash, or a decoy.
pub async fn sign_in(State(state): State<AppState>, JsonBody(body): JsonBody<dto::SignIn>) -> Result<Response, ApiError> {
    let (subject, role) = match state.operators.sign_in(&body.email, body.password.clone()).await.map_err(operator_error)? {
        Some(Some(operator)) => (commands::Operator::subject(operator), Role::Admin),
        Some(None) => return Err(ApiError::InvalidCredentials),
        None => match state.accounts.sign_in(&body.email, body.password).await? {
            Some(customer) => (customer.to_string(), Role::Customer),
            None => return Err(ApiError::InvalidCredentials),
        },
    };
    let token = state.jwt.mint(&subject, role, chrono::Duration::seconds(ACCESS_TOKEN_SECONDS));
    Ok(Json(json!({ "access_token": token, "token_type": "Bearer", "expires_in": ACCESS_TOKEN_SECONDS })).into_response())
}

fn operator_error(e: commands::OperatorError) -> ApiError {
    match e {
        commands::OperatorError::Password(commands::PasswordError::Busy) => ApiError::Edge(edge::EdgeError::Unavailable),
        other => ApiError::internal(other),
    }
}

/// How long a signed-in customer's access token lasts.
const ACCESS_TOKEN_SECONDS: i64 = 900;

async fn customer_command(
    state: &AppState,
    ctx: &Ctx,
    raw_id: &str,
    command: Result<CustomerCommand, ApiError>,
) -> Result<Response, ApiError> {
    let id = parse_id(raw_id)?;
    ctx.principal().require_customer(id)?;
    let outcome = state.service.customer(id, command?, ctx.if_match, &ctx.metadata).await?;
    Ok(respond(StatusCode::OK, outcome))
}

pub async fn change_email(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ctx: Ctx,
    JsonBody(body): JsonBody<dto::ChangeEmail>,
) -> Result<Response, ApiError> {
    customer_command(&state, &ctx, &id, body.try_into()).await
}

pub async fn update_address(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ctx: Ctx,
    JsonBody(body): JsonBody<dto::UpdateAddress>,
) -> Result<Response, ApiError> {
    customer_command(&state, &ctx, &id, body.try_into()).await
}

pub async fn deactivate_customer(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ctx: Ctx,
    JsonBody(body): JsonBody<dto::Reason>,
) -> Result<Response, ApiError> {
    customer_command(&state, &ctx, &id, body.try_into()).await
}

/// Forgets a customer (the customer itself, or an admin): its personal
/// data becomes unreadable everywhere and its email is free again.
pub async fn forget_customer(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ctx: Ctx,
    JsonBody(_): JsonBody<dto::Empty>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    ctx.principal().require_customer(id)?;
    let outcome = state.accounts.forget(id, ctx.if_match, &ctx.metadata).await?;
    Ok(respond(StatusCode::OK, outcome))
}

// --- products ---

pub async fn add_product(State(state): State<AppState>, ctx: Ctx, JsonBody(body): JsonBody<dto::AddProduct>) -> Result<Response, ApiError> {
    ctx.principal().require_admin()?;
    let id = new_id(body.id);
    let command = ProductCommand::try_from(dto::WithId(id, body))?;
    let outcome = state.service.product(id, command, ctx.if_match, &ctx.metadata).await?;
    Ok(respond(StatusCode::CREATED, outcome))
}

async fn product_command(
    state: &AppState,
    ctx: &Ctx,
    raw_id: &str,
    command: Result<ProductCommand, ApiError>,
) -> Result<Response, ApiError> {
    ctx.principal().require_admin()?;
    let id = parse_id(raw_id)?;
    let outcome = state.service.product(id, command?, ctx.if_match, &ctx.metadata).await?;
    Ok(respond(StatusCode::OK, outcome))
}

pub async fn update_product_details(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ctx: Ctx,
    JsonBody(body): JsonBody<dto::UpdateDetails>,
) -> Result<Response, ApiError> {
    product_command(&state, &ctx, &id, body.try_into()).await
}

pub async fn change_price(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ctx: Ctx,
    JsonBody(body): JsonBody<dto::ChangePrice>,
) -> Result<Response, ApiError> {
    product_command(&state, &ctx, &id, body.try_into()).await
}

pub async fn restock(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ctx: Ctx,
    JsonBody(body): JsonBody<dto::Restock>,
) -> Result<Response, ApiError> {
    product_command(&state, &ctx, &id, body.try_into()).await
}

pub async fn discontinue(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ctx: Ctx,
    JsonBody(_): JsonBody<dto::Empty>,
) -> Result<Response, ApiError> {
    product_command(&state, &ctx, &id, Ok(ProductCommand::Discontinue)).await
}

// --- orders ---

pub async fn place_order(State(state): State<AppState>, ctx: Ctx, JsonBody(body): JsonBody<dto::PlaceOrder>) -> Result<Response, ApiError> {
    let id = new_id(body.id);
    let request = dto::PlaceOrderRequest::try_from(body)?;
    ctx.principal().require_customer(request.customer_id)?;
    let outcome = state.service.place_order(id, request.customer_id, request.lines, request.shipping_address, &ctx.metadata).await?;
    Ok(respond(StatusCode::ACCEPTED, outcome))
}

async fn order_command(
    state: &AppState,
    ctx: &Ctx,
    raw_id: &str,
    command: Result<OrderCommand, ApiError>,
    owner_may: bool,
) -> Result<Response, ApiError> {
    let id = parse_id(raw_id)?;
    let principal = ctx.principal();
    if !owner_may {
        principal.require_admin()?;
    } else if principal.role != Role::Admin {
        // Answer 404 rather than 403 for orders that do not exist.
        let order = state.service.load::<OrderAggregate>(&domain::stream_id::<OrderAggregate>(id)).await?;
        let order = order.state.ok_or(ApiError::Domain(domain::DomainError::NotFound("order")))?;
        principal.require_customer(order.customer_id)?;
    }
    let outcome = state.service.execute::<OrderAggregate>(id, command?, ctx.if_match, &ctx.metadata).await?;
    Ok(respond(StatusCode::OK, outcome))
}

pub async fn cancel_order(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ctx: Ctx,
    JsonBody(body): JsonBody<dto::Reason>,
) -> Result<Response, ApiError> {
    order_command(&state, &ctx, &id, body.try_into(), true).await
}

pub async fn ship_order(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ctx: Ctx,
    JsonBody(body): JsonBody<dto::ShipOrder>,
) -> Result<Response, ApiError> {
    order_command(&state, &ctx, &id, body.try_into(), false).await
}

pub async fn deliver_order(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ctx: Ctx,
    JsonBody(_): JsonBody<dto::Empty>,
) -> Result<Response, ApiError> {
    order_command(&state, &ctx, &id, Ok(OrderCommand::Deliver), false).await
}

// --- payments ---

/// The payment provider's webhook: authenticated by an HMAC-SHA256 of the
/// raw body, idempotent by the provider's event id.
pub async fn payment_webhook(State(state): State<AppState>, mut ctx: Ctx, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let header = headers.get("x-signature").and_then(|v| v.to_str().ok());
    if !crate::webhook::verify(state.webhook_secret.as_bytes(), &body, header) {
        return Err(ApiError::unauthorized("an X-Signature: sha256=<hex HMAC of the body> header matching the body is required"));
    }

    let dto: dto::PaymentWebhook = dto::parse(&body)?;
    ctx.metadata.idempotency_key = Some(dto.provider_event_id.clone());
    let (order_id, command) = <(Uuid, OrderCommand)>::try_from(dto)?;
    let outcome = state.service.execute::<OrderAggregate>(order_id, command, None, &ctx.metadata).await?;
    Ok(respond(StatusCode::OK, outcome))
}
