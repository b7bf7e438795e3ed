WITH "__dp_rows" AS (
  SELECT
    "visits"."user_id" AS "__dp_unit",
    CASE WHEN age IS NULL THEN NULL ELSE LEAST(GREATEST(age, 18), 90) END AS "__dp_v0"
  FROM visits
  WHERE
    NOT "visits"."user_id" IS NULL
), "__dp_groups" AS (
  SELECT
    "__dp_unit",
    COUNT("__dp_v0") AS "__dp_s0",
    COALESCE(SUM((
      "__dp_v0" - CAST(54.0 AS DOUBLE)
    )), 0) AS "__dp_s1",
    COALESCE(
      SUM((
        "__dp_v0" - CAST(54.0 AS DOUBLE)
      ) * (
        "__dp_v0" - CAST(54.0 AS DOUBLE)
      )),
      0
    ) AS "__dp_s2"
  FROM __dp_rows
  GROUP BY
    "__dp_unit"
), "__dp_contrib" AS (
  SELECT
    CAST(ROUND(
      CASE
        WHEN "__dp_s0" <= 20
        THEN "__dp_s0"
        ELSE CAST(20.0 AS DOUBLE) * "__dp_s0" / "__dp_s0"
      END * CAST(64.0 AS DOUBLE)
    ) AS BIGINT) AS "__dp_s0",
    CAST(ROUND(
      CASE
        WHEN "__dp_s0" <= 20
        THEN "__dp_s1"
        ELSE CAST(20.0 AS DOUBLE) * "__dp_s1" / "__dp_s0"
      END * CAST(2.0 AS DOUBLE)
    ) AS BIGINT) AS "__dp_s1",
    CAST(ROUND(
      CASE
        WHEN "__dp_s0" <= 20
        THEN "__dp_s2"
        ELSE CAST(20.0 AS DOUBLE) * "__dp_s2" / "__dp_s0"
      END * CAST(0.0625 AS DOUBLE)
    ) AS BIGINT) AS "__dp_s2"
  FROM __dp_groups
)
SELECT
  COALESCE(SUM("__dp_s0"), 0) AS "__dp_s0",
  COALESCE(SUM("__dp_s1"), 0) AS "__dp_s1",
  COALESCE(SUM("__dp_s2"), 0) AS "__dp_s2"
FROM __dp_contrib
