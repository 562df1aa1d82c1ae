//! The names projections go by: their checkpoint rows, dead letters,
//! metrics labels and `projections rebuild NAME`. Kept in one place so the
//! crate and its callers spell them the same way (the SQL in the
//! migrations still names them literally).

pub const PRODUCTS: &str = "products";
pub const CUSTOMERS: &str = "customers";
pub const ORDERS: &str = "orders";
pub const SALES: &str = "sales";
pub const AUDIT: &str = "audit";
/// The search index, a consumer of the log beside the projections.
pub const SEARCH: &str = "search";
/// The order process, a consumer of the log that parks the steps it
/// cannot take in the same table as the projections.
pub const ORDER_PROCESS: &str = domain::process::NAME;
