//! Stream names, `<category>-<uuid>`: the one place they are made and read.
//!
//! The log stores a stream id as text; everything that needs to know what a
//! stream is (whose personal data it holds, which entity it folds into)
//! parses it here rather than splitting strings by hand.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;
use uuid::Uuid;

/// The kinds of stream this domain writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    Customer,
    Product,
    Order,
    /// Uniqueness claims (emails, SKUs): internal bookkeeping of the write
    /// side, never an entity a reader asks for.
    Claim,
}

impl Category {
    pub const ALL: [Category; 4] = [Category::Customer, Category::Product, Category::Order, Category::Claim];

    /// The category as it is written before the `-` of a stream id.
    pub const fn as_str(self) -> &'static str {
        match self {
            Category::Customer => "customer",
            Category::Product => "product",
            Category::Order => "order",
            Category::Claim => "claim",
        }
    }

    pub fn parse(text: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.as_str() == text)
    }

    /// Whether events of this category may carry personal fields (see
    /// `crate::personal`): a customer's own stream, and its orders.
    pub const fn holds_personal_data(self) -> bool {
        matches!(self, Category::Customer | Category::Order)
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stream's identity: its category and the entity's uuid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId {
    pub category: Category,
    pub id: Uuid,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StreamIdError {
    #[error("a stream id is <category>-<uuid>")]
    Shape,
    #[error("unknown stream category {0:?}")]
    UnknownCategory(String),
    #[error("the id of a stream id is a UUID")]
    Id,
}

impl StreamId {
    pub const fn new(category: Category, id: Uuid) -> StreamId {
        StreamId { category, id }
    }

    /// The stream of aggregate `A`'s entity `id`.
    pub const fn of<A: crate::Aggregate>(id: Uuid) -> StreamId {
        StreamId { category: A::CATEGORY, id }
    }

    pub fn parse(text: &str) -> Result<StreamId, StreamIdError> {
        let (category, id) = split(text)?;
        let category = Category::parse(category).ok_or_else(|| StreamIdError::UnknownCategory(category.to_owned()))?;
        Ok(StreamId { category, id })
    }

    /// The entity id of `text` when it is a stream of `category`.
    pub fn id_in(text: &str, category: Category) -> Option<Uuid> {
        StreamId::parse(text).ok().filter(|s| s.category == category).map(|s| s.id)
    }
}

/// The category and id of any well-formed stream id, of this domain's
/// categories or not: the log itself stores streams of any category.
pub fn split(text: &str) -> Result<(&str, Uuid), StreamIdError> {
    let (category, id) = text.split_once('-').ok_or(StreamIdError::Shape)?;
    if category.is_empty() {
        return Err(StreamIdError::Shape);
    }
    // Only the hyphenated form: one entity has one stream id.
    if id.len() != 36 {
        return Err(StreamIdError::Id);
    }
    Ok((category, Uuid::parse_str(id).map_err(|_| StreamIdError::Id)?))
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.category.as_str(), self.id.hyphenated())
    }
}

impl FromStr for StreamId {
    type Err = StreamIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StreamId::parse(s)
    }
}

impl From<StreamId> for String {
    fn from(s: StreamId) -> String {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_its_text() {
        let id = Uuid::from_u128(0x0190f3c4_0000_7000_8000_00000000a001);
        for category in Category::ALL {
            let stream = StreamId::new(category, id);
            let text = stream.to_string();
            assert_eq!(text, format!("{category}-0190f3c4-0000-7000-8000-00000000a001"));
            assert_eq!(StreamId::parse(&text), Ok(stream));
        }
    }

    #[test]
    fn refuses_what_is_not_a_stream_id() {
        assert_eq!(StreamId::parse("product"), Err(StreamIdError::Shape));
        assert_eq!(StreamId::parse("thing-0190f3c4-0000-7000-8000-00000000a001"), Err(StreamIdError::UnknownCategory("thing".into())));
        assert_eq!(StreamId::parse("product-1"), Err(StreamIdError::Id));
        assert_eq!(StreamId::parse("product-0190f3c400007000800000000000a001"), Err(StreamIdError::Id));
        assert_eq!(StreamId::id_in("order-0190f3c4-0000-7000-8000-00000000a001", Category::Product), None);
        assert_eq!(StreamId::parse("-0190f3c4-0000-7000-8000-00000000a001"), Err(StreamIdError::Shape));
        assert!(split("thing-0190f3c4-0000-7000-8000-00000000a001").is_ok());
    }
}
