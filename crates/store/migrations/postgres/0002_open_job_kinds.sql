-- Job kinds are an open set (the job handlers in atelier-jobs define them): the store keeps
-- any well-formed kind name.
ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_kind_check;
