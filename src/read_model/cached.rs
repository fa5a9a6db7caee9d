//! What the dashboard cache holds, and what a batch of events makes stale.
//!
//! The read API serves these values cache-aside and the worker prewarms them
//! after each batch; both compute them here, from [`super`]'s queries, so a
//! value means the same whoever wrote it. A value is registered under tags
//! (see [`crate::redis::keys::tags`]) that a batch touching it invalidates.

use std::collections::BTreeSet;

use fleet_jobs::{Change, Event};

use super::{Missing, PageRequest, DEFAULT_PER_PAGE};
use crate::redis::cache::{Entry, Ttls, Versioned};
use crate::redis::keys::{tags, Keys};

/// What a batch touched: the tags to invalidate and the keys to prewarm.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Touched {
    /// (tenant, tag)
    pub tags: BTreeSet<(String, String)>,
    /// (tenant, course)
    pub courses: BTreeSet<(String, i64)>,
    pub tenants: BTreeSet<String>,
}

impl Touched {
    pub fn of(events: &[Event]) -> Self {
        let mut touched = Self::default();
        for event in events {
            let tenant = &event.tenant_id;
            let mut tag = |tag: String| touched.tags.insert((tenant.clone(), tag));
            match &event.change {
                Change::Enrollment(enrollment) => {
                    tag(tags::enrollment(enrollment.id));
                    tag(tags::DASHBOARD.to_owned());
                    if let Some(user) = enrollment.learner_id() {
                        tag(tags::user(user));
                    }
                    if let Some(course) = enrollment.course_of() {
                        tag(tags::course(course));
                        touched.courses.insert((tenant.clone(), course));
                    }
                    touched.tenants.insert(tenant.clone());
                }
                Change::Course(course) => {
                    tag(tags::course(course.id));
                    tag(tags::DASHBOARD.to_owned());
                    touched.courses.insert((tenant.clone(), course.id));
                    touched.tenants.insert(tenant.clone());
                }
                Change::User(user) => {
                    tag(tags::user(user.id));
                }
                Change::Order(order) => {
                    tag(tags::order(order.id));
                    if let Some(user) = order.learner_id() {
                        tag(tags::user(user));
                    }
                }
                Change::Unhandled => {}
            }
        }
        touched
    }

    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }

    pub fn merge(&mut self, other: Touched) {
        self.tags.extend(other.tags);
        self.courses.extend(other.courses);
        self.tenants.extend(other.tenants);
    }

    /// `<tenant>:<tag>`, as the revalidation hook receives them.
    pub(crate) fn tag_names(&self) -> Vec<String> {
        self.tags.iter().map(|(tenant, tag)| format!("{tenant}:{tag}")).collect()
    }
}

/// One value the dashboard reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Cached {
    Statistics { tenant: String, course: i64 },
    Dashboard { tenant: String },
    Enrollments(PageRequest),
}

impl Cached {
    pub fn key(&self, keys: &Keys) -> String {
        match self {
            Self::Statistics { tenant, course } => keys.statistics(tenant, *course),
            Self::Dashboard { tenant } => keys.dashboard(tenant),
            Self::Enrollments(page) => keys.enrollments(&page.tenant_id, page.course_id, page.page, page.per_page),
        }
    }

    /// The summaries the dashboard reads after a batch, prewarmed before
    /// the batch is acknowledged: each touched course's statistics and each
    /// touched school's dashboard.
    pub(crate) fn summaries_touched_by(touched: &Touched) -> Vec<Self> {
        let courses =
            touched.courses.iter().map(|(tenant, course)| Self::Statistics { tenant: tenant.clone(), course: *course });
        let schools = touched.tenants.iter().map(|tenant| Self::Dashboard { tenant: tenant.clone() });
        courses.chain(schools).collect()
    }

    /// The first page of enrollments of each course a batch touched.
    pub(crate) fn first_pages_touched_by(touched: &Touched) -> impl Iterator<Item = PageRequest> + '_ {
        touched.courses.iter().map(|(tenant, course)| PageRequest {
            tenant_id: tenant.clone(),
            course_id: *course,
            page: 1,
            per_page: DEFAULT_PER_PAGE,
        })
    }

    /// Computes `items` from Postgres, one query per kind, as entries ready
    /// to cache (key, tags, TTL and versioned value). Items about a school,
    /// course or page that does not exist are left out: nothing is cached
    /// for them.
    pub async fn compute(
        db: &sqlx::PgPool,
        keys: &Keys,
        ttls: &Ttls,
        items: &[Cached],
    ) -> Result<Vec<Entry>, sqlx::Error> {
        Ok(Self::compute_each(db, keys, ttls, items).await?.into_iter().flatten().collect())
    }

    /// Like [`Cached::compute`], with one outcome per item in the order
    /// asked: its entry, or what it is about that does not exist.
    pub(crate) async fn compute_each(
        db: &sqlx::PgPool,
        keys: &Keys,
        ttls: &Ttls,
        items: &[Cached],
    ) -> Result<Vec<Result<Entry, Missing>>, sqlx::Error> {
        let mut courses = Vec::new();
        let mut tenants = Vec::new();
        let mut pages = Vec::new();
        for item in items {
            match item {
                Self::Statistics { tenant, course } => courses.push((tenant.clone(), *course)),
                Self::Dashboard { tenant } => tenants.push(tenant.clone()),
                Self::Enrollments(page) => pages.push(page.clone()),
            }
        }
        // One transaction: the reads see one state, and through a pooler in
        // transaction mode each statement stays on one server (crate::db).
        let mut tx = db.begin().await?;
        let mut courses_found =
            if courses.is_empty() { Vec::new() } else { super::course_statistics(&mut tx, &courses).await? }
                .into_iter();
        let mut tenants_found =
            if tenants.is_empty() { Vec::new() } else { super::dashboards(&mut tx, &tenants).await? }.into_iter();
        let mut pages_found =
            if pages.is_empty() { Vec::new() } else { super::enrollment_pages(&mut tx, &pages).await? }.into_iter();
        tx.commit().await?;
        let short = || sqlx::Error::Protocol("a read returned fewer rows than asked".into());
        items
            .iter()
            .map(|item| {
                Ok(match item {
                    Self::Statistics { tenant, course } => courses_found.next().ok_or_else(short)?.map(|value| {
                        let tags = vec![keys.tag(tenant, &tags::course(*course))];
                        Entry { key: keys.statistics(tenant, *course), tags, ttl: ttls.statistics, value }
                    }),
                    Self::Dashboard { tenant } => tenants_found.next().ok_or_else(short)?.map(|value| {
                        let tags = vec![keys.tag(tenant, tags::DASHBOARD)];
                        Entry { key: keys.dashboard(tenant), tags, ttl: ttls.dashboard, value }
                    }),
                    Self::Enrollments(page) => {
                        pages_found.next().ok_or_else(short)?.map(|value| page_entry(keys, ttls, page, value))
                    }
                })
            })
            .collect()
    }
}

/// A page of enrollments is registered under its course (every enrollment
/// change tags its course) and under every user it lists (a user's name or
/// email can change without an enrollment event).
fn page_entry(keys: &Keys, ttls: &Ttls, page: &PageRequest, value: Versioned) -> Entry {
    let tenant = &page.tenant_id;
    let mut entry_tags = vec![keys.tag(tenant, &tags::course(page.course_id))];
    if let Some(rows) = value.body["enrollments"].as_array() {
        let users: BTreeSet<i64> = rows.iter().filter_map(|row| row["user_id"].as_i64()).collect();
        entry_tags.extend(users.into_iter().map(|id| keys.tag(tenant, &tags::user(id))));
    }
    Entry {
        key: keys.enrollments(&page.tenant_id, page.course_id, page.page, page.per_page),
        tags: entry_tags,
        ttl: ttls.enrollments,
        value,
    }
}
