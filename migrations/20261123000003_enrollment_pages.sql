-- The dashboard's page of a course's enrollments, newest update first, is
-- read with an index scan instead of a sort of the whole course.
CREATE INDEX enrollments_course_recent ON enrollments (tenant_id, course_id, updated_at DESC, enrollment_id);
DROP INDEX enrollments_course;
