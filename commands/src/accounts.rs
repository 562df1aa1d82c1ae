//! Customer accounts: the customer workflows that reach the password store
//! beside the log. Each is one call for the HTTP layer, which only parses
//! and authorises.
//!
//! Registering with a password is one atomic step: the hash is staged under
//! the id the `CustomerRegistered` event will have, and the append's own
//! transaction moves it in (see `passwords`), so a failure anywhere leaves
//! neither the customer nor the password, and a retry starts afresh.

use domain::customer::{CustomerAggregate, CustomerCommand};
use domain::{DomainError, Email, stream_id};
use eventlog::Metadata;
use uuid::Uuid;

use crate::{CommandService, Outcome, PasswordError, PasswordStore, ServiceError};

#[derive(Clone)]
pub struct Accounts {
    service: CommandService,
    passwords: PasswordStore,
}

/// Whether a command's failure is a decision (nothing was appended, for
/// certain), not a failure whose outcome is unknown.
fn refused(error: &ServiceError) -> bool {
    match error {
        ServiceError::Log(error) => !error.outcome_unknown(),
        ServiceError::Password(_) => false,
        _ => true,
    }
}

fn forgotten() -> ServiceError {
    DomainError::state("the customer is forgotten").into()
}

impl Accounts {
    pub fn new(service: CommandService, passwords: PasswordStore) -> Self {
        Accounts { service, passwords }
    }

    /// Registers a customer (`command` is a `Register`), with its sign-in
    /// password when one is given: both, or neither.
    pub async fn register(
        &self,
        id: Uuid,
        command: CustomerCommand,
        password: Option<String>,
        if_match: Option<u64>,
        metadata: &Metadata,
    ) -> Result<Outcome, ServiceError> {
        let Some(password) = password else { return self.service.customer(id, command, if_match, metadata).await };
        // A repeat of a registration that took effect answers it again:
        // nothing to stage.
        if let Some(first) = self.service.earlier(metadata).await? {
            return Ok(first);
        }
        let phc = self.passwords.hash(password).await?;
        let event_id = Uuid::now_v7();
        self.passwords.stage(event_id, id, &phc).await?;
        let registered = self.service.customer_registered_as(id, command, Some(event_id), if_match, metadata).await;
        match &registered {
            Ok(_) if !self.passwords.moves_with_the_log() => self.passwords.register_staged(event_id, id).await?,
            Ok(_) => {}
            // A decided refusal: that event was never appended and never
            // will be. Any other failure (a lost connection, a group's
            // shared error) may still have committed it, so the staging is
            // left for the trigger, or to expire.
            Err(error) if refused(error) => {
                if let Err(error) = self.passwords.discard_staged(event_id).await {
                    tracing::warn!(%error, "could not drop the password staged for a refused registration");
                }
            }
            Err(_) => {}
        }
        registered
    }

    /// Sets an existing customer's password (never a forgotten one's).
    pub async fn set_password(&self, id: Uuid, password: String) -> Result<(), ServiceError> {
        let customer = self.service.load::<CustomerAggregate>(&stream_id::<CustomerAggregate>(id)).await?;
        match customer.state {
            None => return Err(DomainError::NotFound("customer").into()),
            Some(c) if c.forgotten => return Err(forgotten()),
            Some(_) => {}
        }
        match self.passwords.set(id, password).await {
            // Forgotten while the password was being hashed.
            Err(PasswordError::Forgotten) => Err(forgotten()),
            other => Ok(other?),
        }
    }

    /// Forgets a customer: its personal data becomes unreadable everywhere
    /// and its email is free again. The key and the password go with the
    /// event (the log's triggers, or the vaulted log and this after the
    /// append for a log kept elsewhere; a repeated forget deletes again).
    pub async fn forget(&self, id: Uuid, if_match: Option<u64>, metadata: &Metadata) -> Result<Outcome, ServiceError> {
        let outcome = self.service.customer(id, CustomerCommand::Forget, if_match, metadata).await?;
        if !self.passwords.moves_with_the_log() {
            self.passwords.forget(id).await?;
        }
        Ok(outcome)
    }

    /// The active customer whose email and password these are, if any. An
    /// unknown or malformed email costs what a wrong password costs.
    pub async fn sign_in(&self, email: &str, password: String) -> Result<Option<Uuid>, ServiceError> {
        let customer = match Email::parse(email) {
            Ok(email) => self.service.active_customer_by_email(&email).await?,
            Err(_) => None,
        };
        Ok(if self.passwords.check(customer, password).await? { customer } else { None })
    }
}
