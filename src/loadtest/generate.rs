//! The workload: realistic Thinkific enrollment webhooks, generated and
//! signed before the first one is sent.
//!
//! Each enrollment (a learner in a course) has a history, as Thinkific sends
//! it: `enrollment.created` at 0 %, a few `enrollment.progress` with a rising
//! `percentage_completed` (a fraction in a string, as documented), and for
//! about half of them `enrollment.completed` at 100 %, each with a later
//! `updated_at`. Histories are interleaved in time order, then each webhook
//! is moved by up to `shuffle_window` places (Thinkific delivers out of
//! order), and a `duplicate_rate` share of them is delivered again a little
//! later with the very same body and signature (at-least-once delivery).
//!
//! Everything is built up front, so sending costs the generator no JSON and
//! no HMAC: it shares the machine with the fleet it measures. Event ids are
//! 23 digits like Thinkific's, starting with the run's start time in
//! milliseconds, so every run's ids are new (none is answered `duplicate`
//! because of an earlier run) and one run's ids are one contiguous range
//! (counted in Postgres by [`Workload::event_ids`]). Enrollment and user ids
//! are new per run too; course ids are the same every run (1 to `courses`),
//! as a school's catalogue is.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use fleet_jobs::TenantId;
use hyper::header::HeaderValue;
use serde_json::json;

/// The most events one run generates (enrollment ids are built from the run's
/// start second and a number below this).
pub(crate) const MAX_EVENTS: u64 = 10_000_000;

/// What to generate.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Distinct events (webhooks with their own id).
    pub events: u64,
    pub courses: u32,
    pub users: u32,
    /// The share of events (0 to 1) delivered a second time.
    pub duplicate_rate: f64,
    /// How many places a webhook may move from its time order.
    pub shuffle_window: u32,
    /// The school every event belongs to (`tenant_id` in each body).
    pub tenant: TenantId,
    /// Seeds the random choices: the same seed and start time give the same bodies.
    pub seed: u64,
}

/// One webhook to send: its body and signature, ready.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub body: Bytes,
    pub signature: HeaderValue,
    pub topic: &'static str,
}

/// Every webhook of a run, in the order they are sent, and what they hold.
#[derive(Debug)]
pub struct Workload {
    /// In sending order; duplicates share their original's body.
    pub webhooks: Vec<Webhook>,
    pub summary: Generated,
    /// The first and last event id of the run: every id of the run is
    /// between them (same width, digits only).
    pub event_ids: (String, String),
}

/// What was generated, for the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Generated {
    pub events: u64,
    pub duplicates: u64,
    pub requests: u64,
    pub enrollments: u64,
    pub courses: u32,
    /// Learners with at least one enrollment.
    pub users: u64,
    pub created: u64,
    pub progress: u64,
    pub completed: u64,
    pub body_bytes: u64,
    pub seconds: f64,
}

const FIRST_NAMES: [&str; 12] =
    ["Maya", "Liam", "Aisha", "Noah", "Sofia", "Kenji", "Amara", "Lucas", "Priya", "Mateo", "Zoe", "Omar"];
const LAST_NAMES: [&str; 12] =
    ["Chen", "Okafor", "Garcia", "Müller", "Rossi", "Tanaka", "Silva", "Novak", "Khan", "Dubois", "Smith", "Lee"];
const SUBJECTS: [&str; 10] = [
    "Watercolor",
    "Bookkeeping",
    "Spanish",
    "Photography",
    "Python",
    "Pottery",
    "Yoga",
    "Marketing",
    "Guitar",
    "Statistics",
];

/// One event of an enrollment's history, before it is serialized.
struct Step {
    enrollment: usize,
    action: &'static str,
    percentage: f64,
    updated_at: DateTime<Utc>,
}

/// A learner in a course.
struct Enrollment {
    id: i64,
    user: i64,
    course: i64,
    activated_at: DateTime<Utc>,
}

/// Generates and signs the whole run with `signing_key`, starting now.
pub fn generate(shape: &Shape, signing_key: &[u8]) -> Workload {
    let started = std::time::Instant::now();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut rng = fastrand::Rng::with_seed(shape.seed);
    let run_millis = now.as_millis() as u64;
    let now = DateTime::<Utc>::from(UNIX_EPOCH + now);
    // Unique per run and below 2^63 for any run before the year 2255.
    let id_base = (run_millis / 1000) as i64 * MAX_EVENTS as i64;

    let (enrollments, mut steps) = histories(shape, &mut rng, id_base, now);
    // The order Thinkific would send them in: by time, each history's steps
    // in their own order.
    steps.sort_by_key(|step| step.updated_at);
    let event_id = |index: usize| format!("{run_millis:013}{index:010}");

    let mut summary = Generated {
        events: steps.len() as u64,
        duplicates: 0,
        requests: 0,
        enrollments: enrollments.len() as u64,
        courses: shape.courses,
        users: enrollments.iter().map(|enrollment| enrollment.user).collect::<HashSet<_>>().len() as u64,
        created: 0,
        progress: 0,
        completed: 0,
        body_bytes: 0,
        seconds: 0.0,
    };
    let distinct: Vec<Webhook> = steps
        .iter()
        .enumerate()
        .map(|(index, step)| {
            match step.action {
                "created" => summary.created += 1,
                "completed" => summary.completed += 1,
                _ => summary.progress += 1,
            }
            let body = body(&shape.tenant, &event_id(index), step, &enrollments[step.enrollment]);
            let signature = HeaderValue::from_str(&crate::intake::sign(signing_key, body.as_bytes()))
                .expect("a hex signature is a valid header value");
            let topic = match step.action {
                "created" => "enrollment.created",
                "completed" => "enrollment.completed",
                _ => "enrollment.progress",
            };
            Webhook { body: Bytes::from(body), signature, topic }
        })
        .collect();

    let order = sending_order(distinct.len(), shape, &mut rng);
    summary.duplicates = (order.len() - distinct.len()) as u64;
    summary.requests = order.len() as u64;
    let webhooks: Vec<Webhook> = order.into_iter().map(|index| distinct[index].clone()).collect();
    summary.body_bytes = webhooks.iter().map(|webhook| webhook.body.len() as u64).sum();
    summary.seconds = started.elapsed().as_secs_f64();
    let last = distinct.len().saturating_sub(1);
    Workload { webhooks, summary, event_ids: (event_id(0), event_id(last)) }
}

/// Enrollments and their histories, `shape.events` steps in all (the last
/// history may be cut short).
fn histories(shape: &Shape, rng: &mut fastrand::Rng, id_base: i64, now: DateTime<Utc>) -> (Vec<Enrollment>, Vec<Step>) {
    let total = shape.events as usize;
    let mut enrollments = Vec::with_capacity(total / 3 + 1);
    let mut steps = Vec::with_capacity(total);
    let mut taken: HashSet<(i64, i64)> = HashSet::new();
    let day = Duration::from_secs(86_400);
    while steps.len() < total {
        // A learner takes a course once; when the pairs run out (few users
        // and courses), a pair may come again as a second enrollment.
        let (mut user, mut course) = (0, 0);
        for _ in 0..8 {
            user = id_base + i64::from(rng.u32(1..=shape.users));
            course = popular_course(rng, shape.courses);
            if taken.insert((user, course)) {
                break;
            }
        }
        let index = enrollments.len();
        // Enrolled within the last week, each step minutes to hours later;
        // the whole history stays in the past.
        let activated_at = now - chrono::Duration::from_std(day * 7).unwrap_or_default()
            + chrono::Duration::seconds(rng.i64(0..5 * 86_400));
        enrollments.push(Enrollment { id: id_base + index as i64 + 1, user, course, activated_at });
        let progress_steps = rng.usize(0..=5);
        let completes = rng.bool();
        let mut at = activated_at + chrono::Duration::milliseconds(rng.i64(10..500));
        let mut percentage = 0.0;
        steps.push(Step { enrollment: index, action: "created", percentage, updated_at: at });
        for step in 0..progress_steps {
            if steps.len() == total {
                break;
            }
            at += chrono::Duration::seconds(rng.i64(600..6 * 3600));
            // Rising towards (not reaching) 1: completion is its own event.
            let remaining = (progress_steps - step) as f64;
            percentage += (0.95 - percentage) * rng.f64().max(0.1) / remaining;
            steps.push(Step { enrollment: index, action: "progress", percentage, updated_at: at });
        }
        if completes && steps.len() < total {
            at += chrono::Duration::seconds(rng.i64(600..6 * 3600));
            steps.push(Step { enrollment: index, action: "completed", percentage: 1.0, updated_at: at });
        }
    }
    (enrollments, steps)
}

/// A course between 1 and `courses`, the first ones more popular (as in a
/// real catalogue): half the picks go to the first fifth of the courses.
fn popular_course(rng: &mut fastrand::Rng, courses: u32) -> i64 {
    let popular = (courses / 5).max(1);
    let course = if rng.bool() { rng.u32(1..=popular) } else { rng.u32(1..=courses) };
    i64::from(course)
}

/// The index (into the distinct events) of each webhook in sending order:
/// time order with local moves, plus the duplicates, each a little after
/// its original.
fn sending_order(events: usize, shape: &Shape, rng: &mut fastrand::Rng) -> Vec<usize> {
    let window = f64::from(shape.shuffle_window);
    let mut keyed: Vec<(f64, usize)> = (0..events).map(|index| (index as f64 + rng.f64() * window, index)).collect();
    let duplicates = ((events as f64) * shape.duplicate_rate).round() as usize;
    let mut chosen: Vec<usize> = (0..events).collect();
    rng.shuffle(&mut chosen);
    // Redelivered after a retry: up to a twentieth of the run later.
    let later = (events as f64 / 20.0).max(1.0) + window;
    for &index in &chosen[..duplicates.min(events)] {
        let original = keyed[index].0;
        keyed.push((original + 1.0 + rng.f64() * later, index));
    }
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
    keyed.into_iter().map(|(_, index)| index).collect()
}

/// The webhook body Thinkific sends for `step`.
fn body(tenant: &TenantId, event_id: &str, step: &Step, enrollment: &Enrollment) -> String {
    let time = |at: DateTime<Utc>| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let user = enrollment.user;
    let first_name = FIRST_NAMES[(user % FIRST_NAMES.len() as i64) as usize];
    let last_name = LAST_NAMES[(user / 7 % LAST_NAMES.len() as i64) as usize];
    let course = enrollment.course;
    let subject = SUBJECTS[(course % SUBJECTS.len() as i64) as usize];
    let level = course / SUBJECTS.len() as i64 + 1;
    let completed_at = (step.action == "completed").then(|| time(step.updated_at));
    let started_at = enrollment.activated_at + chrono::Duration::seconds(42);
    json!({
        "id": event_id,
        "resource": "enrollment",
        "action": step.action,
        "tenant_id": tenant.as_str(),
        // Thinkific stamps the envelope a few milliseconds after the change.
        "created_at": time(step.updated_at + chrono::Duration::milliseconds(23)),
        "payload": {
            "activated_at": time(enrollment.activated_at),
            "completed_at": completed_at,
            "course": {"id": course, "name": format!("{subject} {level}")},
            "course_id": course,
            "created_at": time(enrollment.activated_at + chrono::Duration::milliseconds(13)),
            "expiry_date": null,
            "free_trial": false,
            "id": enrollment.id,
            "percentage_completed": format!("{:.2}", step.percentage),
            "started_at": time(started_at),
            "updated_at": time(step.updated_at),
            "user": {
                "email": format!("{}.{}.{user}@example.com", first_name.to_lowercase(), last_name.to_lowercase()),
                "first_name": first_name,
                "id": user,
                "last_name": last_name,
            }
        }
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn shape(events: u64, duplicate_rate: f64) -> Shape {
        Shape {
            events,
            courses: 7,
            users: 40,
            duplicate_rate,
            shuffle_window: 10,
            tenant: TenantId::parse("school-1").expect("tenant"),
            seed: 42,
        }
    }

    #[test]
    fn every_event_is_signed_counted_and_duplicates_are_sent_again_unchanged() {
        let workload = generate(&shape(500, 0.1), b"key");
        let summary = &workload.summary;
        assert_eq!((summary.events, summary.duplicates, summary.requests), (500, 50, 550));
        assert_eq!(summary.created + summary.progress + summary.completed, 500);
        assert_eq!(workload.webhooks.len(), 550);
        let mut sends: HashMap<String, u32> = HashMap::new();
        for webhook in &workload.webhooks {
            assert_eq!(webhook.signature, crate::intake::sign(b"key", &webhook.body).as_str());
            let envelope = fleet_jobs::Envelope::parse(&webhook.body).expect("an event the intake accepts");
            assert_eq!(envelope.tenant_id.as_ref().map(TenantId::as_str), Some("school-1"));
            assert_eq!(envelope.topic(), webhook.topic);
            let (first, last) = &workload.event_ids;
            assert!(envelope.id.len() == 23 && first <= &envelope.id && &envelope.id <= last, "{}", envelope.id);
            *sends.entry(envelope.id.to_string()).or_default() += 1;
        }
        assert_eq!(sends.len(), 500);
        assert_eq!(sends.values().filter(|&&count| count == 2).count(), 50);
    }

    #[test]
    fn each_history_rises_in_time_and_percentage() {
        let workload = generate(&shape(2_000, 0.0), b"key");
        let mut last: HashMap<i64, (String, f64)> = HashMap::new();
        let mut events: Vec<serde_json::Value> =
            workload.webhooks.iter().map(|webhook| serde_json::from_slice(&webhook.body).expect("JSON")).collect();
        events.sort_by_key(|event| event["payload"]["updated_at"].as_str().map(str::to_owned));
        for event in events {
            let payload = &event["payload"];
            let enrollment = payload["id"].as_i64().expect("an enrollment id");
            let percentage: f64 =
                payload["percentage_completed"].as_str().and_then(|p| p.parse().ok()).expect("a percentage");
            let updated = payload["updated_at"].as_str().expect("updated_at").to_owned();
            if let Some((previous_update, previous_percentage)) = last.get(&enrollment) {
                assert!(updated > *previous_update && percentage >= *previous_percentage, "{event}");
                assert_ne!(event["action"], "created", "{event}");
            } else {
                assert_eq!(event["action"], "created", "{event}");
            }
            last.insert(enrollment, (updated, percentage));
        }
        assert!(last.len() > 100, "{} enrollments", last.len());
    }

    #[test]
    fn the_same_seed_gives_the_same_order() {
        let topics = |workload: Workload| workload.webhooks.iter().map(|w| w.topic).collect::<Vec<_>>();
        assert_eq!(topics(generate(&shape(300, 0.2), b"k")), topics(generate(&shape(300, 0.2), b"k")));
    }
}
