//! A learner (a user): the `user.*` topics, its payload, and how its rows
//! are written (`users`). Enrollments and orders embed a stub of their user.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use sqlx::PgConnection;

use crate::parse;
use crate::version::{Latest, Version, VersionColumns};

/// The topics of a user that the fleet applies.
pub(crate) const TOPICS: &[&str] = &["user.signup", "user.updated"];

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct User {
    #[serde(deserialize_with = "parse::id")]
    pub id: i64,
    #[serde(default, deserialize_with = "parse::optional_text")]
    pub email: Option<String>,
    #[serde(default, deserialize_with = "parse::optional_text")]
    pub first_name: Option<String>,
    #[serde(default, deserialize_with = "parse::optional_text")]
    pub last_name: Option<String>,
    #[serde(default, deserialize_with = "parse::optional_text")]
    pub company: Option<String>,
    #[serde(default, deserialize_with = "parse::optional_json")]
    pub roles: Option<Value>,
    #[serde(default, deserialize_with = "parse::optional_timestamp")]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "parse::optional_timestamp")]
    pub updated_at: Option<DateTime<Utc>>,
}

impl User {
    /// Reads the payload of a user topic.
    pub(crate) fn decode(_topic: &str, payload: Value) -> Result<Self, serde_json::Error> {
        parse::payload(payload)
    }

    /// Offers its row at `version`.
    pub(crate) fn offer(&self, tenant: &str, version: Version, users: &mut Latest<UserRow>) {
        let row = UserRow {
            email: self.email.clone(),
            first_name: self.first_name.clone(),
            last_name: self.last_name.clone(),
            company: self.company.clone(),
            roles: self.roles.clone(),
            created_at: self.created_at,
        };
        users.offer((tenant.to_owned(), self.id), version, row);
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EmbeddedUser {
    #[serde(deserialize_with = "parse::id")]
    pub id: i64,
    #[serde(default, deserialize_with = "parse::optional_text")]
    pub email: Option<String>,
    #[serde(default, deserialize_with = "parse::optional_text")]
    pub first_name: Option<String>,
    #[serde(default, deserialize_with = "parse::optional_text")]
    pub last_name: Option<String>,
}

impl EmbeddedUser {
    /// Offers the stub of a user another resource's payload embeds.
    pub(crate) fn offer_stub(&self, tenant: &str, version: &Version, users: &mut Latest<UserRow>) {
        let row = UserRow {
            email: self.email.clone(),
            first_name: self.first_name.clone(),
            last_name: self.last_name.clone(),
            company: None,
            roles: None,
            created_at: None,
        };
        users.offer((tenant.to_owned(), self.id), version.clone(), row);
    }
}

/// A user's row as a batch writes it.
pub(crate) struct UserRow {
    email: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    company: Option<String>,
    roles: Option<Value>,
    created_at: Option<DateTime<Utc>>,
}

pub(crate) async fn upsert(conn: &mut PgConnection, rows: Latest<UserRow>) -> Result<u64, sqlx::Error> {
    if rows.0.is_empty() {
        return Ok(0);
    }
    let (mut tenants, mut ids, mut emails, mut first, mut last) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut companies, mut roles, mut created) = (vec![], vec![], vec![]);
    let mut versions = VersionColumns::default();
    for ((tenant, id), (version, row)) in rows.0 {
        tenants.push(tenant);
        ids.push(id);
        emails.push(row.email);
        first.push(row.first_name);
        last.push(row.last_name);
        companies.push(row.company);
        roles.push(row.roles);
        created.push(row.created_at);
        versions.push(version);
    }
    let result = sqlx::query(
        "INSERT INTO users AS u (tenant_id, user_id, email, first_name, last_name, company, roles, user_created_at,
                source_rank, source_updated_at, source_event_created_at, source_event_id)
         SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::jsonb[], $8::timestamptz[], $9::int2[], $10::timestamptz[], $11::timestamptz[], $12::text[])
         ON CONFLICT (tenant_id, user_id) DO UPDATE SET
                email = EXCLUDED.email, first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name,
                company = EXCLUDED.company, roles = EXCLUDED.roles, user_created_at = EXCLUDED.user_created_at,
                source_rank = EXCLUDED.source_rank, source_updated_at = EXCLUDED.source_updated_at,
                source_event_created_at = EXCLUDED.source_event_created_at,
                source_event_id = EXCLUDED.source_event_id
         WHERE (u.source_rank, u.source_updated_at, u.source_event_created_at, u.source_event_id)
             < (EXCLUDED.source_rank, EXCLUDED.source_updated_at, EXCLUDED.source_event_created_at, EXCLUDED.source_event_id)",
    )
    .bind(tenants)
    .bind(ids)
    .bind(emails)
    .bind(first)
    .bind(last)
    .bind(companies)
    .bind(roles)
    .bind(created)
    .bind(versions.ranks)
    .bind(versions.updated_at)
    .bind(versions.event_created_at)
    .bind(versions.event_ids)
    .execute(conn)
    .await?;
    Ok(result.rows_affected())
}
