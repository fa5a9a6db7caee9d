-- Pages of a course's enrollments (newest update first), in the order asked.
-- $1: tenant ids; $2: course ids; $3: page numbers (from 1); $4: page sizes.
-- `missing` names what does not exist: 'school', 'course' (as for the
-- statistics) or 'page' (a page after the last; page 1 always exists).
SELECT w.ordinal,
       CASE WHEN t.tenant_id IS NULL AND NOT EXISTS (SELECT 1 FROM courses k WHERE k.tenant_id = w.tenant_id)
                THEN 'school'
            WHEN s.tenant_id IS NULL AND NOT EXISTS (
                     SELECT 1 FROM courses k WHERE k.tenant_id = w.tenant_id AND k.course_id = w.course_id)
                THEN 'course'
            WHEN w.page > 1 AND p.enrollments IS NULL
                THEN 'page'
       END AS missing,
       coalesce(s.version, 0) AS version,
       jsonb_build_object(
           'tenant_id', w.tenant_id, 'course_id', w.course_id, 'page', w.page, 'per_page', w.per_page,
           'total', coalesce(s.enrollments, 0),
           'enrollments', coalesce(p.enrollments, '[]'::jsonb),
           'version', coalesce(s.version, 0)) AS body
FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int8[]) WITH ORDINALITY AS w(tenant_id, course_id, page, per_page, ordinal)
LEFT JOIN tenant_statistics t ON t.tenant_id = w.tenant_id
LEFT JOIN course_statistics s ON s.tenant_id = w.tenant_id AND s.course_id = w.course_id
CROSS JOIN LATERAL (
    SELECT jsonb_agg(jsonb_build_object(
               'enrollment_id', e.enrollment_id, 'user_id', e.user_id, 'email', u.email,
               'first_name', u.first_name, 'last_name', u.last_name,
               'percentage_completed', e.percentage_completed, 'started_at', e.started_at,
               'completed_at', e.completed_at, 'expiry_date', e.expiry_date,
               'free_trial', e.free_trial, 'updated_at', e.updated_at)
           ORDER BY e.updated_at DESC, e.enrollment_id) AS enrollments
    FROM (SELECT * FROM enrollments e
          WHERE e.tenant_id = w.tenant_id AND e.course_id = w.course_id
          ORDER BY e.updated_at DESC, e.enrollment_id
          LIMIT w.per_page OFFSET (w.page - 1) * w.per_page) e
    LEFT JOIN users u ON u.tenant_id = e.tenant_id AND u.user_id = e.user_id) p
ORDER BY w.ordinal
