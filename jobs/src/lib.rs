//! The Thinkific event model and the handlers that apply events to Postgres.
//!
//! This crate knows what a Thinkific webhook means and how it changes the
//! fleet's tables. It knows nothing of HTTP or of Redis Streams: the intake
//! uses [`Envelope`] to check that a body is an event at all, and the worker
//! decodes stream entries into [`Event`]s and hands whole batches to
//! [`apply_batch`].

mod apply;
mod event;
mod ids;
mod parse;

pub use apply::{already_applied, apply_batch, ApplyError, BatchReport};
pub use event::{Change, Course, DecodeError, Enrollment, Envelope, EnvelopeError, Event, Order, User, Version};
pub use ids::{check_id, IdError, TenantId, MAX_ID_LEN};

/// The fleet's schema, embedded so that `fleet migrate` needs no files on disk.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// The topics whose payloads the worker applies to Postgres. Any other topic
/// is recorded in the `events` table and acknowledged.
pub const HANDLED_TOPICS: &[&str] = &[
    "enrollment.created",
    "enrollment.progress",
    "enrollment.completed",
    "enrollment.trial",
    "user.signup",
    "user.updated",
    "order.created",
    "course.created",
    "course.updated",
    "course.deleted",
];
