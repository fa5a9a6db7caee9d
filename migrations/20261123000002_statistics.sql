-- Statistics per course and per school, kept up to date by deltas.
--
-- Statement-level triggers with transition tables see every enrollment row
-- a statement inserted or changed, old and new, under the statement's row
-- locks. They add each row's contribution once per statement (per batch,
-- never per event), so the cost grows with the batch, not with the course,
-- and the numbers commit in the same transaction as the enrollments.
-- Rows the version guard left untouched are not in the transition tables,
-- so duplicates and stale events change nothing here either.
--
-- `version` counts changes; the cache uses it so that an older computation
-- never overwrites a newer one.

CREATE TABLE course_statistics (
    tenant_id          text           NOT NULL,
    course_id          bigint         NOT NULL,
    enrollments        bigint         NOT NULL DEFAULT 0,
    -- started and not completed
    active             bigint         NOT NULL DEFAULT 0,
    completed          bigint         NOT NULL DEFAULT 0,
    percentage_sum     numeric(24, 6) NOT NULL DEFAULT 0,
    completion_rate    double precision GENERATED ALWAYS AS
        (CASE WHEN enrollments > 0 THEN completed::double precision / enrollments ELSE 0 END) STORED,
    average_percentage double precision GENERATED ALWAYS AS
        (CASE WHEN enrollments > 0 THEN (percentage_sum / enrollments)::double precision ELSE 0 END) STORED,
    version            bigint         NOT NULL DEFAULT 0,
    updated_at         timestamptz    NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, course_id)
);

CREATE TABLE tenant_statistics (
    tenant_id          text           PRIMARY KEY,
    enrollments        bigint         NOT NULL DEFAULT 0,
    active             bigint         NOT NULL DEFAULT 0,
    completed          bigint         NOT NULL DEFAULT 0,
    percentage_sum     numeric(24, 6) NOT NULL DEFAULT 0,
    completion_rate    double precision GENERATED ALWAYS AS
        (CASE WHEN enrollments > 0 THEN completed::double precision / enrollments ELSE 0 END) STORED,
    average_percentage double precision GENERATED ALWAYS AS
        (CASE WHEN enrollments > 0 THEN (percentage_sum / enrollments)::double precision ELSE 0 END) STORED,
    -- bumped by any change to the school's statistics or courses
    version            bigint         NOT NULL DEFAULT 0,
    updated_at         timestamptz    NOT NULL DEFAULT now()
);

-- How one enrollment row counts; the one definition of active and completed.
CREATE FUNCTION enrollment_is_completed(completed_at timestamptz, percentage double precision)
    RETURNS boolean LANGUAGE sql IMMUTABLE
    RETURN completed_at IS NOT NULL OR percentage >= 100;

CREATE FUNCTION enrollment_is_active(started_at timestamptz, completed_at timestamptz, percentage double precision)
    RETURNS boolean LANGUAGE sql IMMUTABLE
    RETURN started_at IS NOT NULL AND NOT enrollment_is_completed(completed_at, percentage);

-- Adds the signed contributions in `deltas` (sign, tenant, course, started,
-- completed, percentage) to both statistics tables, in key order so that
-- concurrent batches take their row locks in the same order.
CREATE FUNCTION apply_statistics_deltas(deltas jsonb) RETURNS void LANGUAGE sql AS $$
    WITH d AS (
        SELECT tenant_id, course_id,
               sum(sign)::bigint AS enrollments,
               sum(sign * enrollment_is_active(started_at, completed_at, percentage)::int)::bigint AS active,
               sum(sign * enrollment_is_completed(completed_at, percentage)::int)::bigint AS completed,
               sum(sign * percentage::numeric(24, 6)) AS percentage_sum
        FROM jsonb_to_recordset(deltas) AS r(sign int, tenant_id text, course_id bigint,
             started_at timestamptz, completed_at timestamptz, percentage double precision)
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

CREATE FUNCTION enrollments_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM apply_statistics_deltas(
        (SELECT jsonb_agg(jsonb_build_object('sign', 1, 'tenant_id', tenant_id, 'course_id', course_id,
                'started_at', started_at, 'completed_at', completed_at, 'percentage', percentage_completed))
         FROM new_rows))
    WHERE EXISTS (SELECT 1 FROM new_rows);
    RETURN NULL;
END $$;

CREATE FUNCTION enrollments_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM apply_statistics_deltas(
        (SELECT jsonb_agg(change) FROM (
            SELECT jsonb_build_object('sign', -1, 'tenant_id', tenant_id, 'course_id', course_id,
                   'started_at', started_at, 'completed_at', completed_at, 'percentage', percentage_completed) AS change
            FROM old_rows
            UNION ALL
            SELECT jsonb_build_object('sign', 1, 'tenant_id', tenant_id, 'course_id', course_id,
                   'started_at', started_at, 'completed_at', completed_at, 'percentage', percentage_completed)
            FROM new_rows) AS changes))
    WHERE EXISTS (SELECT 1 FROM new_rows);
    RETURN NULL;
END $$;

CREATE TRIGGER enrollments_statistics_insert AFTER INSERT ON enrollments
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION enrollments_inserted();
CREATE TRIGGER enrollments_statistics_update AFTER UPDATE ON enrollments
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION enrollments_updated();

-- A course renamed or deleted changes the school's dashboard.
CREATE FUNCTION courses_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tenant_statistics AS t (tenant_id, version)
    SELECT DISTINCT tenant_id, 1 FROM new_rows ORDER BY tenant_id
    ON CONFLICT (tenant_id) DO UPDATE SET version = t.version + 1, updated_at = now();
    RETURN NULL;
END $$;

CREATE TRIGGER courses_statistics_insert AFTER INSERT ON courses
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION courses_changed();
CREATE TRIGGER courses_statistics_update AFTER UPDATE ON courses
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION courses_changed();

-- Statistics for enrollments applied before this migration.
SELECT apply_statistics_deltas(
    (SELECT jsonb_agg(jsonb_build_object('sign', 1, 'tenant_id', tenant_id, 'course_id', course_id,
            'started_at', started_at, 'completed_at', completed_at, 'percentage', percentage_completed))
     FROM enrollments))
WHERE EXISTS (SELECT 1 FROM enrollments);
