-- Recounts the statistics of the schools in $1 from their enrollments,
-- exactly as the triggers of 20261123000002_statistics.sql count them, and
-- repairs every row that drifted. Run under SHARE locks on courses and
-- enrollments (see reconcile.rs), so no batch changes what is counted
-- meanwhile.
--
-- - A course row whose numbers differ from its recount, or that is missing,
--   is set to the recount with its version bumped (a missing one starts at 1).
-- - A course row without enrollments is recounted as zeros, not deleted: a
--   deleted row would restart its version at 0, under values already cached.
-- - A school's row is set to the sum of its courses' recounts; its version is
--   bumped when its numbers drifted or any of its courses was repaired (its
--   dashboard lists them), as the triggers bump it for any change.
-- Returns one row per repaired row: which table, its key, and whether its
-- numbers drifted (false: only the version was bumped).
WITH counted AS (
    SELECT tenant_id, course_id,
           count(*)::bigint AS enrollments,
           (count(*) FILTER (WHERE enrollment_is_active(started_at, completed_at, percentage_completed)))::bigint AS active,
           (count(*) FILTER (WHERE enrollment_is_completed(completed_at, percentage_completed)))::bigint AS completed,
           sum(percentage_completed::numeric(24, 6)) AS percentage_sum
    FROM enrollments
    WHERE tenant_id = ANY($1::text[])
    GROUP BY tenant_id, course_id
),
drifted_courses AS (
    SELECT tenant_id, course_id,
           coalesce(c.enrollments, 0) AS enrollments, coalesce(c.active, 0) AS active,
           coalesce(c.completed, 0) AS completed, coalesce(c.percentage_sum, 0) AS percentage_sum
    FROM counted c
    FULL JOIN (SELECT * FROM course_statistics WHERE tenant_id = ANY($1::text[])) s USING (tenant_id, course_id)
    WHERE s.tenant_id IS NULL
       OR (s.enrollments, s.active, s.completed, s.percentage_sum) IS DISTINCT FROM
          (coalesce(c.enrollments, 0), coalesce(c.active, 0), coalesce(c.completed, 0), coalesce(c.percentage_sum, 0))
),
repaired_courses AS (
    INSERT INTO course_statistics AS s (tenant_id, course_id, enrollments, active, completed, percentage_sum, version)
    SELECT tenant_id, course_id, enrollments, active, completed, percentage_sum, 1
    FROM drifted_courses
    ORDER BY tenant_id, course_id
    ON CONFLICT (tenant_id, course_id) DO UPDATE SET
        enrollments = EXCLUDED.enrollments,
        active = EXCLUDED.active,
        completed = EXCLUDED.completed,
        percentage_sum = EXCLUDED.percentage_sum,
        version = s.version + 1,
        updated_at = now()
    RETURNING tenant_id, course_id
),
school_totals AS (
    SELECT tenant_id, sum(enrollments)::bigint AS enrollments, sum(active)::bigint AS active,
           sum(completed)::bigint AS completed, sum(percentage_sum) AS percentage_sum
    FROM counted
    GROUP BY tenant_id
),
drifted_tenants AS (
    SELECT tenant_id,
           coalesce(c.enrollments, 0) AS enrollments, coalesce(c.active, 0) AS active,
           coalesce(c.completed, 0) AS completed, coalesce(c.percentage_sum, 0) AS percentage_sum,
           (t.tenant_id IS NULL
            OR (t.enrollments, t.active, t.completed, t.percentage_sum) IS DISTINCT FROM
               (coalesce(c.enrollments, 0), coalesce(c.active, 0), coalesce(c.completed, 0),
                coalesce(c.percentage_sum, 0))) AS drifted
    FROM school_totals c
    FULL JOIN (SELECT * FROM tenant_statistics WHERE tenant_id = ANY($1::text[])) t USING (tenant_id)
),
repaired_tenants AS (
    INSERT INTO tenant_statistics AS t (tenant_id, enrollments, active, completed, percentage_sum, version)
    SELECT tenant_id, enrollments, active, completed, percentage_sum, 1
    FROM drifted_tenants
    WHERE drifted OR tenant_id IN (SELECT tenant_id FROM drifted_courses)
    ORDER BY tenant_id
    ON CONFLICT (tenant_id) DO UPDATE SET
        enrollments = EXCLUDED.enrollments,
        active = EXCLUDED.active,
        completed = EXCLUDED.completed,
        percentage_sum = EXCLUDED.percentage_sum,
        version = t.version + 1,
        updated_at = now()
    RETURNING tenant_id
)
SELECT 'course_statistics' AS statistics, tenant_id, course_id, true AS drifted FROM repaired_courses
UNION ALL
SELECT 'tenant_statistics', r.tenant_id, NULL::bigint, d.drifted
FROM repaired_tenants r JOIN drifted_tenants d USING (tenant_id)
ORDER BY 1, 2, 3
