//! An order: the `order.created` topic, its payload (with the stub of its
//! user), and how its rows are written (`orders`).

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use sqlx::PgConnection;

use crate::parse;
use crate::user::{EmbeddedUser, UserRow};
use crate::version::{Latest, Version};

/// The topics of an order that the fleet applies.
pub(crate) const TOPICS: &[&str] = &["order.created"];

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Order {
    #[serde(deserialize_with = "parse::id")]
    pub id: i64,
    #[serde(default, deserialize_with = "parse::optional_text")]
    pub order_number: Option<String>,
    #[serde(default, deserialize_with = "parse::optional_text")]
    pub status: Option<String>,
    #[serde(default, deserialize_with = "parse::optional_text")]
    pub payment_type: Option<String>,
    #[serde(default, deserialize_with = "parse::optional_id")]
    pub amount_cents: Option<i64>,
    #[serde(default, deserialize_with = "parse::optional_text")]
    pub billing_name: Option<String>,
    #[serde(default, deserialize_with = "parse::optional_id")]
    pub product_id: Option<i64>,
    #[serde(default, deserialize_with = "parse::optional_text")]
    pub product_name: Option<String>,
    #[serde(default, deserialize_with = "parse::optional_json")]
    pub coupon: Option<Value>,
    #[serde(default, deserialize_with = "parse::optional_json")]
    pub items: Option<Value>,
    #[serde(default, deserialize_with = "parse::optional_id")]
    pub user_id: Option<i64>,
    pub user: Option<EmbeddedUser>,
    #[serde(default, deserialize_with = "parse::optional_timestamp")]
    pub created_at: Option<DateTime<Utc>>,
}

impl Order {
    /// The learner: the order's `user_id`, else its embedded user's id.
    pub fn learner_id(&self) -> Option<i64> {
        self.user_id.or(self.user.as_ref().map(|user| user.id))
    }

    /// Reads the payload of an order topic.
    pub(crate) fn decode(_topic: &str, payload: Value) -> Result<Self, serde_json::Error> {
        parse::payload(payload)
    }

    /// Offers its row at `version`, and a stub of its user one rank below.
    pub(crate) fn offer(
        &self,
        tenant: &str,
        version: Version,
        orders: &mut Latest<Order>,
        users: &mut Latest<UserRow>,
    ) {
        if let Some(user) = &self.user {
            let stub = Version { rank: Version::STUB, ..version.clone() };
            user.offer_stub(tenant, &stub, users);
        }
        orders.offer((tenant.to_owned(), self.id), version, self.clone());
    }
}

pub(crate) async fn upsert(conn: &mut PgConnection, rows: Latest<Order>) -> Result<u64, sqlx::Error> {
    if rows.0.is_empty() {
        return Ok(0);
    }
    let (mut tenants, mut ids, mut numbers, mut statuses, mut payment_types) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut amounts, mut billing, mut product_ids, mut product_names) = (vec![], vec![], vec![], vec![]);
    let (mut coupons, mut user_ids, mut items, mut created) = (vec![], vec![], vec![], vec![]);
    let (mut event_created, mut event_ids) = (vec![], vec![]);
    for ((tenant, id), (version, order)) in rows.0 {
        user_ids.push(order.learner_id());
        tenants.push(tenant);
        ids.push(id);
        numbers.push(order.order_number);
        statuses.push(order.status);
        payment_types.push(order.payment_type);
        amounts.push(order.amount_cents);
        billing.push(order.billing_name);
        product_ids.push(order.product_id);
        product_names.push(order.product_name);
        coupons.push(order.coupon.filter(|coupon| !coupon.is_null()));
        items.push(order.items.unwrap_or(Value::Array(vec![])));
        created.push(order.created_at);
        event_created.push(version.event_created_at);
        event_ids.push(version.event_id);
    }
    let result = sqlx::query(
        "INSERT INTO orders AS o (tenant_id, order_id, order_number, status, payment_type, amount_cents,
                billing_name, product_id, product_name, coupon, user_id, items, order_created_at,
                source_event_created_at, source_event_id)
         SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::int8[],
                $7::text[], $8::int8[], $9::text[], $10::jsonb[], $11::int8[], $12::jsonb[],
                $13::timestamptz[], $14::timestamptz[], $15::text[])
         ON CONFLICT (tenant_id, order_id) DO UPDATE SET
                order_number = EXCLUDED.order_number, status = EXCLUDED.status,
                payment_type = EXCLUDED.payment_type, amount_cents = EXCLUDED.amount_cents,
                billing_name = EXCLUDED.billing_name, product_id = EXCLUDED.product_id,
                product_name = EXCLUDED.product_name, coupon = EXCLUDED.coupon, user_id = EXCLUDED.user_id,
                items = EXCLUDED.items, order_created_at = EXCLUDED.order_created_at,
                source_event_created_at = EXCLUDED.source_event_created_at,
                source_event_id = EXCLUDED.source_event_id
         WHERE (o.source_event_created_at, o.source_event_id)
             < (EXCLUDED.source_event_created_at, EXCLUDED.source_event_id)",
    )
    .bind(tenants)
    .bind(ids)
    .bind(numbers)
    .bind(statuses)
    .bind(payment_types)
    .bind(amounts)
    .bind(billing)
    .bind(product_ids)
    .bind(product_names)
    .bind(coupons)
    .bind(user_ids)
    .bind(items)
    .bind(created)
    .bind(event_created)
    .bind(event_ids)
    .execute(conn)
    .await?;
    Ok(result.rows_affected())
}
