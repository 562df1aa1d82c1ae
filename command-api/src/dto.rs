//! Request bodies as clients send them, and their conversion into domain
//! commands. Parsing refuses unknown fields and wrong types (400); the
//! conversion checks values (422). Nothing reaches the domain unchecked.

use domain::customer::CustomerCommand;
use domain::order::OrderCommand;
use domain::product::ProductCommand;
use domain::values::patterns;
use domain::{Address, Currency, DomainError, Email, Money, Sku};
use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use edge::FieldError;

use crate::error::ApiError;

/// Parses a body the way `edge::JsonBody` does (the webhook needs its raw
/// bytes for the signature first).
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    Ok(edge::body::parse(bytes)?)
}

/// Collects every field error of a request before giving up.
#[derive(Default)]
struct Check(Vec<FieldError>);

impl Check {
    fn ok<T>(&mut self, result: Result<T, DomainError>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(DomainError::Invalid { field, message }) => {
                self.0.push(FieldError { field, message });
                None
            }
            Err(other) => {
                self.0.push(FieldError { field: String::new(), message: other.to_string() });
                None
            }
        }
    }

    fn at<T>(&mut self, field: &str, result: Result<T, DomainError>) -> Option<T> {
        self.ok(result.map_err(|e| match e {
            DomainError::Invalid { message, .. } => DomainError::invalid(field, message),
            other => other,
        }))
    }

    fn finish<T>(self, value: Option<T>) -> Result<T, ApiError> {
        match value {
            Some(v) if self.0.is_empty() => Ok(v),
            _ => Err(ApiError::Invalid(self.0)),
        }
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MoneyDto {
    /// Amount in minor units (cents).
    pub amount_minor: i64,
    /// ISO 4217 code, e.g. USD.
    #[schemars(length(equal = 3), pattern(patterns::CURRENCY))]
    pub currency: String,
}

/// A price: money that is never negative.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceDto {
    /// Amount in minor units (cents).
    #[schemars(range(min = 0))]
    pub amount_minor: i64,
    /// ISO 4217 code, e.g. USD.
    #[schemars(length(equal = 3), pattern(patterns::CURRENCY))]
    pub currency: String,
}

impl PriceDto {
    fn to_money(&self, check: &mut Check, field: &str) -> Option<Money> {
        let currency = check.at(&format!("{field}.currency"), Currency::parse(&self.currency))?;
        check.at(&format!("{field}.amount_minor"), Money::price(self.amount_minor, currency))
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddressDto {
    #[schemars(length(max = 200), pattern(patterns::TEXT))]
    pub line1: String,
    #[serde(default)]
    #[schemars(length(max = 200), pattern(patterns::FREE_TEXT))]
    pub line2: Option<String>,
    #[schemars(length(max = 200), pattern(patterns::TEXT))]
    pub city: String,
    #[schemars(length(max = 200), pattern(patterns::TEXT))]
    pub postal_code: String,
    /// ISO 3166-1 alpha-2 code.
    #[schemars(length(equal = 2), pattern(patterns::COUNTRY))]
    pub country: String,
}

impl AddressDto {
    fn to_address(&self, check: &mut Check, field: &str) -> Option<Address> {
        let address = Address {
            line1: self.line1.clone(),
            line2: self.line2.clone(),
            city: self.city.clone(),
            postal_code: self.postal_code.clone(),
            country: self.country.clone(),
        };
        check.ok(address.validate(field).map(|()| address))
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterCustomer {
    #[serde(default)]
    pub id: Option<Uuid>,
    #[schemars(length(max = 254), pattern(patterns::EMAIL))]
    pub email: String,
    #[schemars(length(max = 200), pattern(patterns::TEXT))]
    pub name: String,
    #[serde(default)]
    pub shipping_address: Option<AddressDto>,
    /// Sets the customer's sign-in password (8 to 128 characters); kept
    /// as an argon2id hash outside the event log.
    #[serde(default)]
    #[schemars(length(min = 8, max = 128), pattern(edge::openapi::NO_CONTROL_PATTERN))]
    pub password: Option<String>,
}

/// A sign-in password: 8 to 128 characters, no control characters.
pub fn checked_password(password: &str) -> Result<(), ApiError> {
    let length = password.chars().count();
    let message = if !(8..=128).contains(&length) {
        "must be 8 to 128 characters"
    } else if password.chars().any(char::is_control) {
        "must not contain control characters"
    } else {
        return Ok(());
    };
    Err(ApiError::Invalid(vec![FieldError { field: "password".into(), message: message.into() }]))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPassword {
    /// 8 to 128 characters, none of them a control character.
    #[schemars(length(min = 8, max = 128), pattern(edge::openapi::NO_CONTROL_PATTERN))]
    pub password: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    #[schemars(pattern(patterns::FREE_TEXT))]
    pub email: String,
    #[schemars(pattern(patterns::FREE_TEXT))]
    pub password: String,
}

/// A create body with the id the handler settled on (the caller's, or a new
/// one).
pub struct WithId<T>(pub Uuid, pub T);

impl TryFrom<WithId<RegisterCustomer>> for CustomerCommand {
    type Error = ApiError;
    fn try_from(WithId(customer_id, dto): WithId<RegisterCustomer>) -> Result<Self, ApiError> {
        let mut check = Check::default();
        let email = check.ok(Email::parse(&dto.email));
        let name = check.ok(domain::values::text("name", &dto.name, 200).map(|()| dto.name.clone()));
        let shipping_address = match &dto.shipping_address {
            Some(a) => a.to_address(&mut check, "shipping_address").map(Some),
            None => Some(None),
        };
        let command =
            (|| Some(CustomerCommand::Register { customer_id, email: email?, name: name?, shipping_address: shipping_address? }))();
        check.finish(command)
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeEmail {
    #[schemars(length(max = 254), pattern(patterns::EMAIL))]
    pub email: String,
}

impl TryFrom<ChangeEmail> for CustomerCommand {
    type Error = ApiError;
    fn try_from(dto: ChangeEmail) -> Result<Self, ApiError> {
        let mut check = Check::default();
        let email = check.ok(Email::parse(&dto.email));
        check.finish(email.map(|email| CustomerCommand::ChangeEmail { email }))
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAddress {
    pub shipping_address: AddressDto,
}

impl TryFrom<UpdateAddress> for CustomerCommand {
    type Error = ApiError;
    fn try_from(dto: UpdateAddress) -> Result<Self, ApiError> {
        let mut check = Check::default();
        let address = dto.shipping_address.to_address(&mut check, "shipping_address");
        check.finish(address.map(|shipping_address| CustomerCommand::UpdateShippingAddress { shipping_address }))
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    #[schemars(length(max = 1000), pattern(patterns::TEXT))]
    pub reason: String,
}

impl Reason {
    fn checked(self) -> Result<String, ApiError> {
        let mut check = Check::default();
        let reason = check.ok(domain::values::text("reason", &self.reason, 1000).map(|()| self.reason));
        check.finish(reason)
    }
}

impl TryFrom<Reason> for CustomerCommand {
    type Error = ApiError;
    fn try_from(dto: Reason) -> Result<Self, ApiError> {
        dto.checked().map(|reason| CustomerCommand::Deactivate { reason })
    }
}

impl TryFrom<Reason> for OrderCommand {
    type Error = ApiError;
    fn try_from(dto: Reason) -> Result<Self, ApiError> {
        dto.checked().map(|reason| OrderCommand::Cancel { reason })
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddProduct {
    #[serde(default)]
    pub id: Option<Uuid>,
    /// 1 to 64 visible ASCII characters, unique case-insensitively.
    #[schemars(length(max = 64), pattern(patterns::SKU))]
    pub sku: String,
    #[schemars(length(max = 200), pattern(patterns::TEXT))]
    pub name: String,
    #[schemars(length(max = 10_000), pattern(patterns::FREE_TEXT))]
    pub description: String,
    #[schemars(length(max = 100), pattern(patterns::TEXT))]
    pub category: String,
    pub price: PriceDto,
    #[schemars(range(max = u32::MAX))]
    pub initial_stock: u32,
}

impl TryFrom<WithId<AddProduct>> for ProductCommand {
    type Error = ApiError;
    fn try_from(WithId(product_id, dto): WithId<AddProduct>) -> Result<Self, ApiError> {
        let mut check = Check::default();
        let sku = check.ok(Sku::parse(&dto.sku));
        let price = dto.price.to_money(&mut check, "price");
        let name = check.ok(domain::values::text("name", &dto.name, 200));
        let category = check.ok(domain::values::text("category", &dto.category, 100));
        let command = (|| {
            name?;
            category?;
            Some(ProductCommand::Add {
                product_id,
                sku: sku?,
                name: dto.name,
                description: dto.description,
                category: dto.category,
                price: price?,
                initial_stock: dto.initial_stock,
            })
        })();
        check.finish(command)
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("anyOf" = [
    { "required": ["name"], "properties": { "name": { "type": "string" } } },
    { "required": ["description"], "properties": { "description": { "type": "string" } } },
    { "required": ["category"], "properties": { "category": { "type": "string" } } }
]))]
pub struct UpdateDetails {
    #[serde(default)]
    #[schemars(length(max = 200), pattern(patterns::TEXT))]
    pub name: Option<String>,
    #[serde(default)]
    #[schemars(length(max = 10_000), pattern(patterns::FREE_TEXT))]
    pub description: Option<String>,
    #[serde(default)]
    #[schemars(length(max = 100), pattern(patterns::TEXT))]
    pub category: Option<String>,
}

impl TryFrom<UpdateDetails> for ProductCommand {
    type Error = ApiError;
    fn try_from(dto: UpdateDetails) -> Result<Self, ApiError> {
        if dto.name.is_none() && dto.description.is_none() && dto.category.is_none() {
            return Err(ApiError::Invalid(vec![FieldError {
                field: String::new(),
                message: "give at least one of name, description, category".into(),
            }]));
        }
        Ok(ProductCommand::UpdateDetails { name: dto.name, description: dto.description, category: dto.category })
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePrice {
    pub price: PriceDto,
}

impl TryFrom<ChangePrice> for ProductCommand {
    type Error = ApiError;
    fn try_from(dto: ChangePrice) -> Result<Self, ApiError> {
        let mut check = Check::default();
        let price = dto.price.to_money(&mut check, "price");
        check.finish(price.map(|price| ProductCommand::ChangePrice { price }))
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Restock {
    #[schemars(range(min = 1, max = u32::MAX))]
    pub quantity: u32,
}

impl TryFrom<Restock> for ProductCommand {
    type Error = ApiError;
    fn try_from(dto: Restock) -> Result<Self, ApiError> {
        if dto.quantity == 0 {
            return Err(ApiError::Invalid(vec![FieldError { field: "quantity".into(), message: "must be greater than zero".into() }]));
        }
        Ok(ProductCommand::Restock { quantity: dto.quantity })
    }
}

/// A body that must be an empty object.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderLineDto {
    pub product_id: Uuid,
    #[schemars(range(min = 1, max = u32::MAX))]
    pub quantity: u32,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrder {
    #[serde(default)]
    pub id: Option<Uuid>,
    pub customer_id: Uuid,
    /// 1 to 100 lines, each naming a different product.
    #[schemars(length(min = 1, max = 100))]
    pub lines: Vec<OrderLineDto>,
    pub shipping_address: AddressDto,
}

/// What placing an order needs before prices are looked up.
pub struct PlaceOrderRequest {
    pub customer_id: Uuid,
    pub lines: Vec<(Uuid, u32)>,
    pub shipping_address: Address,
}

impl TryFrom<PlaceOrder> for PlaceOrderRequest {
    type Error = ApiError;
    fn try_from(dto: PlaceOrder) -> Result<Self, ApiError> {
        let mut check = Check::default();
        if dto.lines.is_empty() || dto.lines.len() > 100 {
            check.0.push(FieldError { field: "lines".into(), message: "must hold 1 to 100 lines".into() });
        }
        for (i, line) in dto.lines.iter().enumerate() {
            if line.quantity == 0 {
                check.0.push(FieldError { field: format!("lines[{i}].quantity"), message: "must be greater than zero".into() });
            }
            if dto.lines[..i].iter().any(|l| l.product_id == line.product_id) {
                check.0.push(FieldError {
                    field: format!("lines[{i}].product_id"),
                    message: "each product may appear on one line only".into(),
                });
            }
        }
        let address = dto.shipping_address.to_address(&mut check, "shipping_address");
        let request = address.map(|shipping_address| PlaceOrderRequest {
            customer_id: dto.customer_id,
            lines: dto.lines.iter().map(|l| (l.product_id, l.quantity)).collect(),
            shipping_address,
        });
        check.finish(request)
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShipOrder {
    #[schemars(length(max = 100), pattern(patterns::TEXT))]
    pub carrier: String,
    #[schemars(length(max = 100), pattern(patterns::TEXT))]
    pub tracking_number: String,
}

impl TryFrom<ShipOrder> for OrderCommand {
    type Error = ApiError;
    fn try_from(dto: ShipOrder) -> Result<Self, ApiError> {
        let mut check = Check::default();
        let carrier = check.ok(domain::values::text("carrier", &dto.carrier, 100));
        let tracking = check.ok(domain::values::text("tracking_number", &dto.tracking_number, 100));
        let command = carrier.and(tracking).map(|()| OrderCommand::Ship { carrier: dto.carrier, tracking_number: dto.tracking_number });
        check.finish(command)
    }
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    Captured,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentWebhook {
    #[schemars(length(max = 200), pattern(patterns::TEXT))]
    pub provider_event_id: String,
    pub order_id: Uuid,
    pub amount: MoneyDto,
    pub status: PaymentStatus,
}

impl TryFrom<PaymentWebhook> for (Uuid, OrderCommand) {
    type Error = ApiError;
    fn try_from(dto: PaymentWebhook) -> Result<Self, ApiError> {
        let mut check = Check::default();
        let id = check.ok(domain::values::text("provider_event_id", &dto.provider_event_id, 200));
        let currency = check.at("amount.currency", Currency::parse(&dto.amount.currency));
        let command = (|| {
            id?;
            Some((
                dto.order_id,
                OrderCommand::Pay { provider_event_id: dto.provider_event_id, amount: Money::new(dto.amount.amount_minor, currency?) },
            ))
        })();
        check.finish(command)
    }
}
