//! The Thinkific event model and the handlers that apply events to Postgres.
//!
//! This crate knows what a Thinkific webhook means and how it changes the
//! fleet's tables. It knows nothing of HTTP or of Redis Streams: the intake
//! uses [`Envelope`] to check that a body is an event at all, and the worker
//! decodes stream entries into [`Event`]s and hands whole batches to
//! [`apply_batch`].
//!
//! One module per resource (`enrollment`, `user`, `course`, `order`) says
//! what it is: its topics, how its payload reads, the rows it offers and how
//! they are written. `event` lists the resources and decodes a body;
//! `apply` reduces a batch and writes the tables in one lock order;
//! `version` is how the greatest state of a record wins.

mod apply;
mod course;
mod enrollment;
mod envelope;
mod event;
mod ids;
mod order;
mod parse;
mod user;
mod version;

pub use apply::{already_applied, apply_batch, ApplyError, BatchReport};
pub use course::Course;
pub use enrollment::Enrollment;
pub use envelope::{Envelope, EnvelopeError};
pub use event::{Change, DecodeError, Event};
pub use ids::{check_id, IdError, TenantId, MAX_ID_LEN};
pub use order::Order;
pub use user::User;
pub use version::Version;

/// The fleet's schema, embedded so that `fleet migrate` needs no files on disk.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// The topics whose payloads the worker applies to Postgres, from each
/// resource's own list ([`event::RESOURCES`]). Any other topic is recorded
/// in the `events` table and acknowledged.
pub static HANDLED_TOPICS: std::sync::LazyLock<Vec<&'static str>> =
    std::sync::LazyLock::new(|| event::RESOURCES.iter().flat_map(|(topics, _)| topics.iter().copied()).collect());
