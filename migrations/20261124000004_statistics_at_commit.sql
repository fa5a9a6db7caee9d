-- Statistics brought up to date at commit, with arrays instead of jsonb.
--
-- Every batch of a school updates its statistics row and the rows of the
-- courses it touches. Done by the enrollment triggers, those row locks were
-- taken in the middle of a batch and held to its commit, so concurrent
-- workers waited for each other's whole batch. Now the statement triggers
-- only queue their deltas (one `pending_statistics` row per statement, no
-- lock anyone else wants), and a deferred trigger adds everything the
-- transaction queued in one step when it commits: the locks are held for
-- that step and the commit only, taken in key order (courses, then the
-- school), so concurrent batches never deadlock on them. The numbers still
-- commit in the same transaction as the enrollments, whoever writes them.
--
-- A course row rewritten with the same name, slug and deletion (every
-- enrollment carries its course) no longer bumps the school's version; a
-- real change of what the dashboard shows still does, at commit too.

CREATE TABLE pending_statistics (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction  xid8   NOT NULL DEFAULT pg_current_xact_id(),
    -- One element per counted row; sign -1 takes a row's old contribution
    -- away, +1 adds its new one, 0 (no course) only bumps the school.
    signs        int[]              NOT NULL,
    tenant_ids   text[]             NOT NULL,
    course_ids   bigint[]           NOT NULL,
    started      timestamptz[]      NOT NULL,
    completed    timestamptz[]      NOT NULL,
    percentages  double precision[] NOT NULL
);
CREATE INDEX pending_statistics_transaction ON pending_statistics (transaction);

-- Adds the signed contributions of the arrays to both statistics tables, in
-- key order. An element without a course only bumps its school's version.
CREATE FUNCTION add_statistics_deltas(
    signs int[], tenant_ids text[], course_ids bigint[],
    started timestamptz[], completed timestamptz[], percentages double precision[]
) RETURNS void LANGUAGE sql AS $$
    WITH d AS (
        SELECT tenant_id, course_id,
               sum(sign)::bigint AS enrollments,
               sum(sign * enrollment_is_active(started_at, completed_at, percentage)::int)::bigint AS active,
               sum(sign * enrollment_is_completed(completed_at, percentage)::int)::bigint AS completed,
               coalesce(sum(sign * percentage::numeric(24, 6)), 0) AS percentage_sum
        FROM UNNEST(signs, tenant_ids, course_ids, started, completed, percentages)
             AS r(sign, tenant_id, course_id, started_at, completed_at, percentage)
        GROUP BY tenant_id, course_id
    ),
    courses AS (
        INSERT INTO course_statistics AS s (tenant_id, course_id, enrollments, active, completed, percentage_sum, version)
        SELECT tenant_id, course_id, enrollments, active, completed, percentage_sum, 1 FROM d
        WHERE course_id IS NOT NULL
        ORDER BY tenant_id, course_id
        ON CONFLICT (tenant_id, course_id) DO UPDATE SET
            enrollments = s.enrollments + EXCLUDED.enrollments,
            active = s.active + EXCLUDED.active,
            completed = s.completed + EXCLUDED.completed,
            percentage_sum = s.percentage_sum + EXCLUDED.percentage_sum,
            version = s.version + 1,
            updated_at = now()
        RETURNING 1
    )
    INSERT INTO tenant_statistics AS t (tenant_id, enrollments, active, completed, percentage_sum, version)
    SELECT tenant_id, sum(enrollments), sum(active), sum(completed), sum(percentage_sum), 1
    FROM d GROUP BY tenant_id ORDER BY tenant_id
    ON CONFLICT (tenant_id) DO UPDATE SET
        enrollments = t.enrollments + EXCLUDED.enrollments,
        active = t.active + EXCLUDED.active,
        completed = t.completed + EXCLUDED.completed,
        percentage_sum = t.percentage_sum + EXCLUDED.percentage_sum,
        version = t.version + 1,
        updated_at = now();
$$;

-- At commit: the first of the transaction's queued rows to fire adds them
-- all in one step; the others then find theirs gone and do nothing.
CREATE FUNCTION add_pending_statistics() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pending_statistics WHERE id = NEW.id) THEN
        RETURN NULL;
    END IF;
    PERFORM add_statistics_deltas(array_agg(sign), array_agg(tenant_id), array_agg(course_id),
                                  array_agg(started_at), array_agg(completed_at), array_agg(percentage))
    FROM (SELECT p.* FROM pending_statistics p WHERE p.transaction = pg_current_xact_id()) AS queued,
         UNNEST(queued.signs, queued.tenant_ids, queued.course_ids, queued.started, queued.completed, queued.percentages)
             AS r(sign, tenant_id, course_id, started_at, completed_at, percentage);
    DELETE FROM pending_statistics WHERE transaction = pg_current_xact_id();
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER pending_statistics_at_commit AFTER INSERT ON pending_statistics
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION add_pending_statistics();

CREATE OR REPLACE FUNCTION enrollments_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pending_statistics (signs, tenant_ids, course_ids, started, completed, percentages)
    SELECT array_agg(1), array_agg(tenant_id), array_agg(course_id),
           array_agg(started_at), array_agg(completed_at), array_agg(percentage_completed)
    FROM new_rows
    HAVING count(*) > 0;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION enrollments_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pending_statistics (signs, tenant_ids, course_ids, started, completed, percentages)
    SELECT array_agg(sign), array_agg(tenant_id), array_agg(course_id),
           array_agg(started_at), array_agg(completed_at), array_agg(percentage_completed)
    FROM (SELECT -1 AS sign, tenant_id, course_id, started_at, completed_at, percentage_completed FROM old_rows
          UNION ALL
          SELECT 1, tenant_id, course_id, started_at, completed_at, percentage_completed FROM new_rows) AS changes
    HAVING count(*) > 0;
    RETURN NULL;
END $$;

DROP FUNCTION apply_statistics_deltas(jsonb);

-- A new course, or one renamed, re-slugged, deleted or restored, changes the
-- school's dashboard: its version is bumped at commit with the statistics.
CREATE OR REPLACE FUNCTION courses_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pending_statistics (signs, tenant_ids, course_ids, started, completed, percentages)
    SELECT array_agg(0), array_agg(tenant_id), array_agg(NULL::bigint),
           array_agg(NULL::timestamptz), array_agg(NULL::timestamptz), array_agg(0::double precision)
    FROM (SELECT DISTINCT tenant_id FROM new_rows) AS schools
    HAVING count(*) > 0;
    RETURN NULL;
END $$;

CREATE FUNCTION courses_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pending_statistics (signs, tenant_ids, course_ids, started, completed, percentages)
    SELECT array_agg(0), array_agg(tenant_id), array_agg(NULL::bigint),
           array_agg(NULL::timestamptz), array_agg(NULL::timestamptz), array_agg(0::double precision)
    FROM (SELECT DISTINCT n.tenant_id
          FROM new_rows n
          JOIN old_rows o ON o.tenant_id = n.tenant_id AND o.course_id = n.course_id
          WHERE (o.name, o.slug, o.deleted_at) IS DISTINCT FROM (n.name, n.slug, n.deleted_at)) AS schools
    HAVING count(*) > 0;
    RETURN NULL;
END $$;

DROP TRIGGER courses_statistics_update ON courses;
CREATE TRIGGER courses_statistics_update AFTER UPDATE ON courses
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION courses_updated();
