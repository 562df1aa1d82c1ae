//! The storekeeper domain: every business rule, and nothing else.
//!
//! Each aggregate is a pair of pure functions, `decide(&State, Command) ->
//! Result<Vec<Event>, DomainError>` and `evolve(State, &Event) -> State`.
//! Anything a decision needs from outside (prices, whether a customer is
//! active) is looked up by the caller and passed in with the command, so
//! this crate stays synchronous and free of IO: no async runtime, database,
//! HTTP or Kafka crate may be added to its dependencies.

pub mod claim;
pub mod customer;
pub mod error;
pub mod events;
pub mod money;
pub mod order;
pub mod personal;
pub mod process;
pub mod product;
pub mod stream;
pub mod values;

pub use error::DomainError;
pub use money::{Currency, Money};
pub use stream::{Category, StreamId, StreamIdError};
pub use values::{Address, Email, Sku};

/// The decide/evolve pair of one aggregate, so that infrastructure can load,
/// decide and append for any aggregate with one piece of code.
pub trait Aggregate {
    /// The category of this aggregate's streams (`<category>-<uuid>`).
    const CATEGORY: Category;
    /// The shape of `State` as stored in a snapshot, and of what `evolve`
    /// makes of the events: bump it whenever either changes, and every
    /// stored snapshot of the old version is ignored and taken again.
    const SNAPSHOT_VERSION: u32;
    type State: Default + Clone + Send + Sync + serde::Serialize + serde::de::DeserializeOwned + 'static;
    type Command: Send;
    type Event: events::EventCodec + Clone + Send + Sync + 'static;

    fn decide(state: &Self::State, command: Self::Command) -> Result<Vec<Self::Event>, DomainError>;
    fn evolve(state: Self::State, event: &Self::Event) -> Self::State;

    /// About how many bytes `state` holds, for bounding caches of states.
    fn weight(_state: &Self::State) -> usize {
        std::mem::size_of::<Self::State>()
    }

    /// Folds a history into the state it leaves behind.
    fn fold<'a>(events: impl IntoIterator<Item = &'a Self::Event>) -> Self::State
    where
        Self::Event: 'a,
    {
        events.into_iter().fold(Self::State::default(), Self::evolve)
    }
}

/// The stream id of an entity as the log stores it: `<category>-<uuid>`.
pub fn stream_id<A: Aggregate>(id: uuid::Uuid) -> String {
    StreamId::of::<A>(id).to_string()
}
