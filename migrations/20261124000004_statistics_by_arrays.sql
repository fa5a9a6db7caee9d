-- Cheaper statistics triggers, and fewer waits between workers.
--
-- The deltas travel as arrays instead of a jsonb document built and parsed
-- again per row. A course row rewritten with the same name, slug and
-- deletion (every enrollment carries its course) no longer bumps the
-- school's version: only a real change of what the dashboard shows does.
-- That keeps the school's statistics row, which every batch of the school
-- updates, out of the early part of a batch's transaction.

CREATE FUNCTION add_statistics_deltas(
    signs int[], tenant_ids text[], course_ids bigint[],
    started timestamptz[], completed timestamptz[], percentages double precision[]
) RETURNS void LANGUAGE sql AS $$
    WITH d AS (
        SELECT tenant_id, course_id,
               sum(sign)::bigint AS enrollments,
               sum(sign * enrollment_is_active(started_at, completed_at, percentage)::int)::bigint AS active,
               sum(sign * enrollment_is_completed(completed_at, percentage)::int)::bigint AS completed,
               sum(sign * percentage::numeric(24, 6)) AS percentage_sum
        FROM UNNEST(signs, tenant_ids, course_ids, started, completed, percentages)
             AS r(sign, tenant_id, course_id, started_at, completed_at, percentage)
        GROUP BY tenant_id, course_id
    ),
    courses AS (
        INSERT INTO course_statistics AS s (tenant_id, course_id, enrollments, active, completed, percentage_sum, version)
        SELECT tenant_id, course_id, enrollments, active, completed, percentage_sum, 1 FROM d
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

CREATE OR REPLACE FUNCTION enrollments_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM add_statistics_deltas(array_agg(1), array_agg(tenant_id), array_agg(course_id),
                                  array_agg(started_at), array_agg(completed_at), array_agg(percentage_completed))
    FROM new_rows
    HAVING count(*) > 0;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION enrollments_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM add_statistics_deltas(array_agg(sign), array_agg(tenant_id), array_agg(course_id),
                                  array_agg(started_at), array_agg(completed_at), array_agg(percentage_completed))
    FROM (SELECT -1 AS sign, tenant_id, course_id, started_at, completed_at, percentage_completed FROM old_rows
          UNION ALL
          SELECT 1, tenant_id, course_id, started_at, completed_at, percentage_completed FROM new_rows) AS changes
    HAVING count(*) > 0;
    RETURN NULL;
END $$;

DROP FUNCTION apply_statistics_deltas(jsonb);

-- A course renamed, re-slugged, deleted or restored changes the school's
-- dashboard; a stub rewritten with what was already there does not. (A new
-- course always does: courses_changed, on insert, is unchanged.)
CREATE FUNCTION courses_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tenant_statistics AS t (tenant_id, version)
    SELECT DISTINCT n.tenant_id, 1
    FROM new_rows n
    JOIN old_rows o ON o.tenant_id = n.tenant_id AND o.course_id = n.course_id
    WHERE (o.name, o.slug, o.deleted_at) IS DISTINCT FROM (n.name, n.slug, n.deleted_at)
    ORDER BY 1
    ON CONFLICT (tenant_id) DO UPDATE SET version = t.version + 1, updated_at = now();
    RETURN NULL;
END $$;

DROP TRIGGER courses_statistics_update ON courses;
CREATE TRIGGER courses_statistics_update AFTER UPDATE ON courses
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION courses_updated();
