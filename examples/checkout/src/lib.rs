//! A checkout service's payment step: charges an order through a Stripe-shaped payments
//! API (payment intents, form bodies, `402` card errors), exactly once, however the
//! network behaves. This is the code you would write; its tests (`tests/payments.rs`)
//! run it against idempotent-retry's mock server playing that API from a stub file
//! (`mock/examples/stripe.toml`).

use idempotent_retry::reqwest::StatusCode;
use idempotent_retry::{Error, IdempotencyKey, IdempotentClient};
use serde::Deserialize;

/// The payments API, as this service sees it.
pub struct Payments {
    client: IdempotentClient,
    base_url: String,
}

/// A payment the API made (or had made before, for a resumed charge).
#[derive(Debug, PartialEq, Eq)]
pub struct Charge {
    /// The payment intent's id at the payments API.
    pub id: String,
    /// Its status there.
    pub status: String,
    /// Whether the API answered with a payment it had already made for this key.
    pub replayed: bool,
}

/// Why a charge did not go through.
#[derive(Debug)]
pub enum ChargeError {
    /// The card was declined, with the API's code: nothing was charged.
    Declined(String),
    /// The API refused the request otherwise (bad request, auth): nothing was charged.
    Refused(StatusCode),
    /// It may have gone through (we could not find out, or could not read the answer).
    /// Keep the key with the order and call [`Payments::resume`] later: the API charges
    /// at most once per key.
    Unknown(IdempotencyKey),
    /// Nothing was charged (the API could not be reached, or the request was invalid):
    /// starting over is safe.
    NotCharged(Error),
}

#[derive(Deserialize)]
struct PaymentIntent {
    id: String,
    status: String,
}

#[derive(Deserialize)]
struct CardError {
    error: CardErrorBody,
}

#[derive(Deserialize)]
struct CardErrorBody {
    code: String,
}

impl Payments {
    /// Payments at `base_url`, through `client`.
    pub fn new(client: IdempotentClient, base_url: impl Into<String>) -> Self {
        Self {
            client,
            base_url: base_url.into(),
        }
    }

    /// Charges `amount_cents` in `currency` with `payment_method`, with a new
    /// idempotency key.
    pub async fn charge(
        &self,
        amount_cents: u64,
        currency: &str,
        payment_method: &str,
    ) -> Result<Charge, ChargeError> {
        self.send(amount_cents, currency, payment_method, None)
            .await
    }

    /// Charges again with the key of an earlier charge whose outcome was unknown: the API
    /// answers with the first payment if it was made, or makes it now.
    pub async fn resume(
        &self,
        key: IdempotencyKey,
        amount_cents: u64,
        currency: &str,
        payment_method: &str,
    ) -> Result<Charge, ChargeError> {
        self.send(amount_cents, currency, payment_method, Some(key))
            .await
    }

    /// The payment intent `id`, as the API has it now.
    pub async fn retrieve(&self, id: &str) -> Result<String, ChargeError> {
        let url = format!("{}/v1/payment_intents/{id}", self.base_url);
        let response = self
            .client
            .request_idempotent(idempotent_retry::reqwest::Method::GET, url)
            .send()
            .await
            .map_err(sort)?;
        if !response.status().is_success() {
            return Err(ChargeError::Refused(response.status()));
        }
        let intent: PaymentIntent = response.json().await.map_err(sort)?;
        Ok(intent.status)
    }

    async fn send(
        &self,
        amount_cents: u64,
        currency: &str,
        payment_method: &str,
        key: Option<IdempotencyKey>,
    ) -> Result<Charge, ChargeError> {
        let amount = amount_cents.to_string();
        // As Stripe's own clients send it: a form.
        let mut request = self
            .client
            .post_idempotent(format!("{}/v1/payment_intents", self.base_url))
            .bearer_auth("sk_test_checkout")
            .form(&[
                ("amount", amount.as_str()),
                ("currency", currency),
                ("payment_method", payment_method),
            ]);
        if let Some(key) = key {
            request = request.idempotency_key(key);
        }
        let response = request.send().await.map_err(sort)?;
        let status = response.status();
        let replayed = response.is_replay();
        if status == StatusCode::PAYMENT_REQUIRED {
            let declined: CardError = response.json().await.map_err(sort)?;
            return Err(ChargeError::Declined(declined.error.code));
        }
        if !status.is_success() {
            return Err(ChargeError::Refused(status));
        }
        // A 2xx whose body we cannot read is still a payment that was made.
        let intent: PaymentIntent = response.json().await.map_err(sort)?;
        Ok(Charge {
            id: intent.id,
            status: intent.status,
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
