-- Statistics of each asked (tenant, course), in the order asked; zeros for
-- a course without enrollments.
-- $1: tenant ids; $2: course ids.
-- `missing` names what does not exist: 'school' (no statistics and no
-- course), 'course' (neither a courses row nor a statistics row).
SELECT w.ordinal,
       CASE WHEN t.tenant_id IS NULL AND NOT EXISTS (SELECT 1 FROM courses k WHERE k.tenant_id = w.tenant_id)
                THEN 'school'
            WHEN s.tenant_id IS NULL AND NOT EXISTS (
                     SELECT 1 FROM courses k WHERE k.tenant_id = w.tenant_id AND k.course_id = w.course_id)
                THEN 'course'
       END AS missing,
       coalesce(s.version, 0) AS version,
       jsonb_build_object(
           'tenant_id', w.tenant_id, 'course_id', w.course_id,
           'enrollments', coalesce(s.enrollments, 0), 'active', coalesce(s.active, 0),
           'completed', coalesce(s.completed, 0), 'completion_rate', coalesce(s.completion_rate, 0),
           'average_percentage', coalesce(s.average_percentage, 0),
           'version', coalesce(s.version, 0), 'updated_at', s.updated_at) AS body
FROM UNNEST($1::text[], $2::int8[]) WITH ORDINALITY AS w(tenant_id, course_id, ordinal)
LEFT JOIN tenant_statistics t ON t.tenant_id = w.tenant_id
LEFT JOIN course_statistics s ON s.tenant_id = w.tenant_id AND s.course_id = w.course_id
ORDER BY w.ordinal
