-- The events audit table is written once per event and read only by the
-- retention job (`applied_at < cutoff`). A btree on (topic, applied_at)
-- cost every insert an index entry and served no query; rows arrive in
-- applied_at order, so a BRIN index finds the old ones as well for almost
-- nothing per insert.
DROP INDEX events_topic_applied_at;
CREATE INDEX events_applied_at ON events USING brin (applied_at);
