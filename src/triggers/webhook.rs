//! Webhook delivery of fired actions (`[triggers.webhook]`): the action's
//! JSON POSTed to `url`, signed (`x-nextbest-signature: sha256=<hex
//! HMAC-SHA256 of the body with the secret>`, and `x-nextbest-action-id`
//! for dedupe), each attempt bounded by `timeout_ms`; a failed attempt (no
//! connection, a timeout, a non-2xx answer) is retried after an
//! exponential backoff with jitter (backon), `attempts` in all; after the
//! last, the action goes to the dead-letter topic (`dlq_topic`,
//! `nextbest.actions.dlq`) with the reason in the `error` header. Without
//! Kafka there is no dead-letter topic: the action is logged and counted.

use super::deliver::DeliverError;
use crate::config::WebhookConfig;
use crate::ingest::producer::EventProducer;
use backon::{BackoffBuilder, ExponentialBuilder};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::Duration;

/// The signature header's name.
pub const SIGNATURE_HEADER: &str = "x-nextbest-signature";
/// The action id header's name.
pub const ACTION_ID_HEADER: &str = "x-nextbest-action-id";

/// Errors setting the webhook up.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("triggers.webhook.url `{0}` is not an http(s) URL")]
    Url(String),
    #[error("triggers.webhook: cannot build the HTTP client: {0}")]
    Client(String),
}

/// What a delivery came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    /// Answered 2xx, at the given attempt (1-based).
    Ok(usize),
    /// Never answered 2xx: dead-lettered (or, without Kafka, dropped) with the reason.
    DeadLettered(String),
}

/// The configured webhook.
pub struct Webhook {
    client: reqwest::Client,
    url: String,
    secret: Vec<u8>,
    attempts: usize,
    backoff: ExponentialBuilder,
    /// The producer and topic of dead letters (None without Kafka).
    dlq: Option<(EventProducer, String)>,
}

/// `sha256=<hex HMAC-SHA256 of body with secret>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // an HMAC takes a key of any length
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

impl Webhook {
    pub fn new(
        cfg: &WebhookConfig,
        producer: Option<EventProducer>,
    ) -> Result<Webhook, WebhookError> {
        if !(cfg.url.starts_with("http://") || cfg.url.starts_with("https://")) {
            return Err(WebhookError::Url(crate::config::redact_url(&cfg.url)));
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.timeout_ms.max(1)))
            .build()
            .map_err(|e| WebhookError::Client(e.to_string()))?;
        let attempts = cfg.attempts.max(1);
        Ok(Webhook {
            client,
            url: cfg.url.clone(),
            secret: cfg.secret.as_bytes().to_vec(),
            attempts,
            backoff: ExponentialBuilder::new()
                .with_min_delay(Duration::from_millis(cfg.backoff_ms.max(1)))
                .with_max_delay(Duration::from_millis(
                    cfg.max_backoff_ms.max(cfg.backoff_ms).max(1),
                ))
                .with_max_times(attempts - 1)
                .with_jitter(),
            dlq: producer.map(|p| (p, cfg.dlq_topic.clone())),
        })
    }

    /// Sends `body` (the action `action_id` of `customer_id`); Ok once it
    /// was answered 2xx or dead-lettered. An error only when the dead
    /// letter itself was not acknowledged (the firing is tried again).
    #[tracing::instrument(name = "trigger_webhook", skip_all, fields(action_id = %action_id))]
    pub async fn deliver(
        &self,
        action_id: &str,
        customer_id: &str,
        body: &[u8],
    ) -> Result<Delivered, DeliverError> {
        let sig = signature(&self.secret, body);
        let mut delays = self.backoff.build();
        let mut attempt = 0;
        let reason = loop {
            attempt += 1;
            let sent = self
                .client
                .post(&self.url)
                .header("content-type", "application/json")
                .header(SIGNATURE_HEADER, &sig)
                .header(ACTION_ID_HEADER, action_id)
                .body(body.to_vec())
                .send()
                .await;
            let why = match sent {
                Ok(r) if r.status().is_success() => {
                    metrics::counter!(crate::metrics::TRIGGER_WEBHOOK_ATTEMPTS, "result" => "ok")
                        .increment(1);
                    return Ok(Delivered::Ok(attempt));
                }
                Ok(r) => format!("answered {}", r.status().as_u16()),
                Err(e) if e.is_timeout() => "timed out".to_string(),
                Err(e) => format!("not sent: {}", e.without_url()),
            };
            metrics::counter!(crate::metrics::TRIGGER_WEBHOOK_ATTEMPTS, "result" => "error")
                .increment(1);
            tracing::debug!(attempt, reason = %why, "webhook attempt failed");
            match delays.next() {
                Some(d) if attempt < self.attempts => tokio::time::sleep(d).await,
                _ => break format!("webhook failed {attempt} times; last: {why}"),
            }
        };
        metrics::counter!(crate::metrics::TRIGGER_WEBHOOK_DEAD_LETTERED).increment(1);
        match &self.dlq {
            Some((p, topic)) => {
                p.send_dead_action(topic, customer_id, body, &reason)
                    .await?;
                tracing::warn!(reason = %reason, topic = %topic, "webhook gave up; action dead-lettered");
            }
            None => {
                tracing::error!(reason = %reason, "webhook gave up; no dead-letter topic without Kafka: action dropped")
            }
        }
        Ok(Delivered::DeadLettered(reason))
    }
}

#[cfg(test)]
mod tests {
    use super::signature;

    #[test]
    fn the_signature_is_rfc_4231_hmac_sha256() {
        // RFC 4231 test case 2
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
