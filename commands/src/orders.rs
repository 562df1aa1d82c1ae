//! Placing an order: the one command that reads other streams (each
//! product's price, the customer's standing) before its aggregate decides.

use domain::customer::CustomerAggregate;
use domain::order::{OrderAggregate, OrderCommand, PricedLine};
use domain::product::ProductAggregate;
use domain::{Aggregate, DomainError, stream_id};
use eventlog::{Metadata, StreamWrite};
use uuid::Uuid;

use crate::service::{CommandService, Decision, Outcome, ServiceError, write};

impl CommandService {
    /// Places an order: looks up the customer and each product's current
    /// price first, then lets the order decide.
    pub async fn place_order(
        &self,
        order_id: Uuid,
        customer_id: Uuid,
        lines: Vec<(Uuid, u32)>,
        shipping_address: domain::Address,
        metadata: &Metadata,
    ) -> Result<Outcome, ServiceError> {
        if let Some(outcome) = self.earlier(metadata).await? {
            return Ok(outcome);
        }
        let mut priced = Vec::with_capacity(lines.len());
        for (product_id, quantity) in lines {
            let product = self.load::<ProductAggregate>(&stream_id::<ProductAggregate>(product_id)).await?;
            let Some(product) = product.state else {
                return Err(DomainError::NotFound("a product of the order").into());
            };
            priced.push(PricedLine { product_id, quantity, unit_price: product.price });
        }
        let stream = &stream_id::<OrderAggregate>(order_id);
        let customer_stream = &stream_id::<CustomerAggregate>(customer_id);
        let (priced, shipping_address) = (&priced, &shipping_address);
        self.run(order_id, stream, None, metadata, |cached| async move {
            let customer = self.load::<CustomerAggregate>(customer_stream).await?;
            let customer_active = match &customer.state {
                Some(c) => c.active,
                None => return Err(DomainError::NotFound("the order's customer").into()),
            };
            let loaded = self.state::<OrderAggregate>(stream, cached).await?;
            let command = OrderCommand::Place {
                order_id,
                customer_id,
                customer_active,
                lines: priced.clone(),
                shipping_address: shipping_address.clone(),
            };
            let events = OrderAggregate::decide(&loaded.state, command)?;
            // The order stands on the customer as read: appended with no
            // event but that version expected, a customer deactivated or
            // forgotten meanwhile makes it conflict and be decided again.
            let as_read = StreamWrite { stream_id: customer_stream.clone(), expected: customer.expected(), events: Vec::new() };
            let writes = vec![write(stream, &loaded, &events, metadata), as_read];
            Ok(Decision::new(stream, loaded, &events, writes))
        })
        .await
    }
}
