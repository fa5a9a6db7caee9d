-- Each asked school's dashboard summary, in the order asked: totals and its
-- largest courses.
-- $1: tenant ids; $2: how many courses to list.
-- `missing` is 'school' for a school without statistics and without courses.
SELECT w.ordinal,
       CASE WHEN t.tenant_id IS NULL AND NOT EXISTS (SELECT 1 FROM courses k WHERE k.tenant_id = w.tenant_id)
                THEN 'school'
       END AS missing,
       coalesce(t.version, 0) AS version,
       jsonb_build_object(
           'tenant_id', w.tenant_id,
           'totals', jsonb_build_object(
               'enrollments', coalesce(t.enrollments, 0), 'active', coalesce(t.active, 0),
               'completed', coalesce(t.completed, 0), 'completion_rate', coalesce(t.completion_rate, 0),
               'average_percentage', coalesce(t.average_percentage, 0),
               'courses', (SELECT count(*) FROM course_statistics c WHERE c.tenant_id = w.tenant_id AND c.enrollments > 0)),
           'courses', coalesce((
               SELECT jsonb_agg(jsonb_build_object(
                          'course_id', c.course_id, 'name', k.name, 'enrollments', c.enrollments,
                          'active', c.active, 'completed', c.completed, 'completion_rate', c.completion_rate,
                          'average_percentage', c.average_percentage)
                      ORDER BY c.enrollments DESC, c.course_id)
               FROM (SELECT * FROM course_statistics c
                     WHERE c.tenant_id = w.tenant_id AND c.enrollments > 0
                     ORDER BY c.enrollments DESC, c.course_id LIMIT $2) c
               LEFT JOIN courses k ON k.tenant_id = c.tenant_id AND k.course_id = c.course_id
               WHERE k.deleted_at IS NULL), '[]'::jsonb),
           'version', coalesce(t.version, 0), 'updated_at', t.updated_at) AS body
FROM UNNEST($1::text[]) WITH ORDINALITY AS w(tenant_id, ordinal)
LEFT JOIN tenant_statistics t ON t.tenant_id = w.tenant_id
ORDER BY w.ordinal
