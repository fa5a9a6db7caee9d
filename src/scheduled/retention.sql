-- Deletes up to $2 events audit rows applied before $1: one short
-- statement, found by their physical position (a TID scan) so the delete
-- itself costs no second search. The outer condition is checked again on
-- each row's latest version, so a row changed meanwhile is left alone.
DELETE FROM events
WHERE ctid = ANY(ARRAY(SELECT ctid FROM events WHERE applied_at < $1 LIMIT $2))
  AND applied_at < $1
