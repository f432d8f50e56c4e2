//! A checkout service's payment step: charges an order through a payments API, exactly
//! once, however the network behaves. This is the code you would write; its tests
//! (`tests/payments.rs`) run it against idempotent-retry's mock server.

use idempotent_retry::reqwest::StatusCode;
use idempotent_retry::{Error, IdempotencyKey, IdempotentClient};
use serde::{Deserialize, Serialize};

/// The payments API, as this service sees it.
pub struct Payments {
    client: IdempotentClient,
    base_url: String,
}

/// A charge the payments API created (or had created before, for a resumed charge).
#[derive(Debug, PartialEq, Eq)]
pub struct Charge {
    /// The charge's id at the payments API.
    pub id: u64,
    /// Whether the API answered with a charge it had already made for this key.
    pub replayed: bool,
}

/// Why a charge did not go through.
#[derive(Debug)]
pub enum ChargeError {
    /// The API refused it (card declined, bad request): nothing was charged.
    Refused(StatusCode),
    /// It may have gone through (we could not find out, or could not read the answer).
    /// Keep the key with the order and call [`Payments::resume`] later: the API charges
    /// at most once per key.
    Unknown(IdempotencyKey),
    /// Nothing was charged (the API could not be reached, or the request was invalid):
    /// starting over is safe.
    NotCharged(Error),
}

#[derive(Serialize)]
struct ChargeRequest<'a> {
    order: &'a str,
    amount_cents: u64,
}

#[derive(Deserialize)]
struct Created {
    id: u64,
}

impl Payments {
    /// Payments at `base_url`, through `client`.
    pub fn new(client: IdempotentClient, base_url: impl Into<String>) -> Self {
        Self {
            client,
            base_url: base_url.into(),
        }
    }

    /// Charges `amount_cents` for `order`, with a new idempotency key.
    pub async fn charge(&self, order: &str, amount_cents: u64) -> Result<Charge, ChargeError> {
        self.send(order, amount_cents, None).await
    }

    /// Charges again with the key of an earlier charge whose outcome was unknown: the API
    /// answers with the first charge if it was made, or makes it now.
    pub async fn resume(
        &self,
        key: IdempotencyKey,
        order: &str,
        amount_cents: u64,
    ) -> Result<Charge, ChargeError> {
        self.send(order, amount_cents, Some(key)).await
    }

    async fn send(
        &self,
        order: &str,
        amount_cents: u64,
        key: Option<IdempotencyKey>,
    ) -> Result<Charge, ChargeError> {
        let mut request = self
            .client
            .post_idempotent(format!("{}/charges", self.base_url))
            .json(&ChargeRequest {
                order,
                amount_cents,
            });
        if let Some(key) = key {
            request = request.idempotency_key(key);
        }
        let response = request.send().await.map_err(sort)?;
        if !response.status().is_success() {
            return Err(ChargeError::Refused(response.status()));
        }
        let replayed = response.is_replay();
        // A 2xx whose body we cannot read is still a charge that was made.
        let created: Created = response.json().await.map_err(sort)?;
        Ok(Charge {
            id: created.id,
            replayed,
        })
    }
}

/// Sorts a failure by the one question that matters: may the charge have been made?
/// If so, never charge again with a new key: keep this one and resume.
fn sort(e: Error) -> ChargeError {
    match e.idempotency_key() {
        Some(key) if e.may_have_executed() => ChargeError::Unknown(key.clone()),
        _ => ChargeError::NotCharged(e),
    }
}
