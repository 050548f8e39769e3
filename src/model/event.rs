//! The feed contract: CloudEvents 1.0 in structured JSON mode carrying a
//! [`CustomerProfile`]. [`ProfileEvent`] is the whole message body; its JSON Schema is
//! committed at `schema/customer-profile.schema.json` and a test fails when it drifts.

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::profile::CustomerProfile;

/// The three event types of the feed; the AMQP routing key is `customer.profile.<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum EventType {
    #[serde(rename = "customer.profile.created")]
    Created,
    #[serde(rename = "customer.profile.updated")]
    Updated,
    #[serde(rename = "customer.profile.merged")]
    Merged,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Created => "customer.profile.created",
            EventType::Updated => "customer.profile.updated",
            EventType::Merged => "customer.profile.merged",
        }
    }

    pub fn parse(name: &str) -> Option<EventType> {
        [EventType::Created, EventType::Updated, EventType::Merged]
            .into_iter()
            .find(|t| t.as_str() == name)
    }

    /// The routing key equals the event type.
    pub fn routing_key(self) -> &'static str {
        self.as_str()
    }
}

/// A CloudEvents 1.0 structured-mode event whose data is a profile version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "conflux customer profile event")]
pub struct ProfileEvent {
    /// Always "1.0".
    pub specversion: String,
    /// `<profile_id>:<version>`; also the AMQP `message_id`. Consumers drop repeats by it.
    pub id: String,
    /// `urn:conflux:<instance>`.
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The profile id.
    pub subject: String,
    #[schemars(with = "String")]
    pub time: Timestamp,
    /// Always "application/json".
    pub datacontenttype: String,
    pub data: CustomerProfile,
}

pub const SPEC_VERSION: &str = "1.0";
pub const DATA_CONTENT_TYPE: &str = "application/json";
/// The AMQP `content_type` of a structured-mode CloudEvent.
pub const MESSAGE_CONTENT_TYPE: &str = "application/cloudevents+json";

impl ProfileEvent {
    pub fn new(
        source: &str,
        event_type: EventType,
        time: Timestamp,
        profile: CustomerProfile,
    ) -> ProfileEvent {
        ProfileEvent {
            specversion: SPEC_VERSION.to_string(),
            id: format!("{}:{}", profile.profile_id, profile.version),
            source: source.to_string(),
            event_type,
            subject: profile.profile_id.to_string(),
            time,
            datacontenttype: DATA_CONTENT_TYPE.to_string(),
            data: profile,
        }
    }

    /// The JSON Schema of the message body, as committed in `schema/`.
    pub fn json_schema() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(ProfileEvent))
            .expect("a generated schema is plain JSON")
    }
}
