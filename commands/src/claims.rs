//! Uniqueness: customer emails (case-insensitive, by keyed hash) and
//! product SKUs are claimed by claim streams appended atomically with the
//! owner's events, so no read model is ever asked whether a value is free.

use domain::claim::{ClaimAggregate, ClaimCommand, ClaimKind, email_claim_stream, legacy_email_claim_stream, sku_claim_stream};
use domain::customer::{CustomerAggregate, CustomerCommand, CustomerEvent};
use domain::product::{ProductAggregate, ProductCommand};
use domain::{Aggregate, Category, DomainError, StreamId, stream_id};
use eventlog::{Metadata, StreamWrite};
use uuid::Uuid;

use crate::service::{CommandService, Decision, Outcome, ServiceError, write};

impl CommandService {
    /// Claims (or releases) a unique value alongside the owner's events.
    /// Claim streams are always read from the log.
    async fn claim(&self, command: ClaimCommand, stream: &str, metadata: &Metadata) -> Result<StreamWrite, ServiceError> {
        let loaded = self.load::<ClaimAggregate>(stream).await?;
        let events = ClaimAggregate::decide(&loaded.state, command)?;
        Ok(write(stream, &loaded, &events, metadata))
    }

    /// Customer commands: registering and changing the email claim the new
    /// address and release the old one in the same atomic append;
    /// forgetting releases it (the log deletes the key with the event).
    pub async fn customer(
        &self,
        id: Uuid,
        command: CustomerCommand,
        if_match: Option<u64>,
        metadata: &Metadata,
    ) -> Result<Outcome, ServiceError> {
        self.customer_registered_as(id, command, None, if_match, metadata).await
    }

    /// `customer`, with the `CustomerRegistered` event (if the command
    /// makes one) appended under the id `registered_as`: what a password
    /// staged for the registration is bound to (see `accounts`).
    pub(crate) async fn customer_registered_as(
        &self,
        id: Uuid,
        command: CustomerCommand,
        registered_as: Option<Uuid>,
        if_match: Option<u64>,
        metadata: &Metadata,
    ) -> Result<Outcome, ServiceError> {
        let stream = &stream_id::<CustomerAggregate>(id);
        let command = &command;
        self.run(id, stream, if_match, metadata, |cached| async move {
            let loaded = self.state::<CustomerAggregate>(stream, cached).await?;
            let events = CustomerAggregate::decide(&loaded.state, command.clone())?;
            let mut writes = vec![write(stream, &loaded, &events, metadata)];
            if let Some(event_id) = registered_as {
                let registered = events.iter().zip(&mut writes[0].events).filter(|(e, _)| matches!(e, CustomerEvent::Registered(_)));
                registered.for_each(|(_, new)| new.event_id = event_id);
            }
            let current = loaded.state.as_ref().map(|c| &c.email);
            let legacy = self.vault().legacy_email_claims().await?;
            for event in &events {
                let (claim, release) = match event {
                    CustomerEvent::Registered(e) => (Some(&e.email), None),
                    // Only the letter case changed: the claim (case-insensitive)
                    // stays the customer's; releasing it would free it.
                    CustomerEvent::EmailChanged(e) if e.email.key() == e.previous_email.key() => (None, None),
                    CustomerEvent::EmailChanged(e) => (Some(&e.email), Some(&e.previous_email)),
                    // Forgetting frees the email for anyone to register.
                    CustomerEvent::Forgotten(_) => (None, current.filter(|e| !e.is_redacted())),
                    _ => (None, None),
                };
                if let Some(email) = claim {
                    let value = self.vault().keyed_hash(&email.key()).await?;
                    let claim_stream = email_claim_stream(&value);
                    if legacy {
                        // Held under its old name by someone else: taken. Either
                        // way its version is checked at the append.
                        let old = self.load::<ClaimAggregate>(&legacy_email_claim_stream(email)).await?;
                        if old.state.owner_stream_id.as_ref().is_some_and(|owner| owner != stream) {
                            return Err(DomainError::EmailTaken.into());
                        }
                        writes.push(StreamWrite {
                            stream_id: legacy_email_claim_stream(email),
                            expected: old.expected(),
                            events: Vec::new(),
                        });
                    }
                    let command = ClaimCommand::Claim { kind: ClaimKind::Email, value, owner_stream_id: stream.clone() };
                    writes.push(self.claim(command, &claim_stream, metadata).await?);
                }
                if let Some(email) = release {
                    let value = self.vault().keyed_hash(&email.key()).await?;
                    let claim_stream = email_claim_stream(&value);
                    if legacy {
                        let command =
                            ClaimCommand::Release { kind: ClaimKind::Email, value: value.clone(), owner_stream_id: stream.clone() };
                        writes.push(self.claim(command, &legacy_email_claim_stream(email), metadata).await?);
                    }
                    let command = ClaimCommand::Release { kind: ClaimKind::Email, value, owner_stream_id: stream.clone() };
                    writes.push(self.claim(command, &claim_stream, metadata).await?);
                }
            }
            Ok(Decision::new(stream, loaded, &events, writes))
        })
        .await
    }

    /// The active customer who holds `email`'s claim, if any: how a
    /// customer is found by email without any store of emails in the clear.
    pub async fn active_customer_by_email(&self, email: &domain::Email) -> Result<Option<Uuid>, ServiceError> {
        let value = self.vault().keyed_hash(&email.key()).await?;
        let mut owner = self.load::<ClaimAggregate>(&email_claim_stream(&value)).await?.state.owner_stream_id;
        if owner.is_none() && self.vault().legacy_email_claims().await? {
            owner = self.load::<ClaimAggregate>(&legacy_email_claim_stream(email)).await?.state.owner_stream_id;
        }
        let Some(id) = owner.and_then(|o| StreamId::id_in(&o, Category::Customer)) else { return Ok(None) };
        let customer = self.load::<CustomerAggregate>(&stream_id::<CustomerAggregate>(id)).await?;
        Ok(customer.state.filter(|c| c.active && !c.forgotten).map(|c| c.id))
    }

    /// Product commands: adding a product claims its SKU.
    pub async fn product(
        &self,
        id: Uuid,
        command: ProductCommand,
        if_match: Option<u64>,
        metadata: &Metadata,
    ) -> Result<Outcome, ServiceError> {
        let ProductCommand::Add { sku, .. } = &command else {
            return self.execute::<ProductAggregate>(id, command, if_match, metadata).await;
        };
        let stream = &stream_id::<ProductAggregate>(id);
        let claim_stream = &sku_claim_stream(sku);
        let sku_key = &sku.key();
        let command = &command;
        self.run(id, stream, if_match, metadata, |cached| async move {
            let loaded = self.state::<ProductAggregate>(stream, cached).await?;
            let events = ProductAggregate::decide(&loaded.state, command.clone())?;
            let claim = ClaimCommand::Claim { kind: ClaimKind::Sku, value: sku_key.clone(), owner_stream_id: stream.clone() };
            let writes = vec![write(stream, &loaded, &events, metadata), self.claim(claim, claim_stream, metadata).await?];
            Ok(Decision::new(stream, loaded, &events, writes))
        })
        .await
    }
}
