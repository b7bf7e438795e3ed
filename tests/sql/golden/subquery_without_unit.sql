WITH "__dp_rows" AS (
  SELECT
    "t"."__dp_unit" AS "__dp_unit",
    1 AS "__dp_v0"
  FROM (
    SELECT
      spend,
      "visits"."user_id" AS "__dp_unit"
    FROM visits
    WHERE
      spend > 0
  ) AS t
  WHERE
    NOT "t"."__dp_unit" IS NULL
), "__dp_groups" AS (
  SELECT
    "__dp_unit",
    COUNT(*) AS "__dp_s0"
  FROM __dp_rows
  GROUP BY
    "__dp_unit"
), "__dp_contrib" AS (
  SELECT
    CAST(LEAST("__dp_s0", 20) AS BIGINT) AS "__dp_s0"
  FROM __dp_groups
)
SELECT
  COALESCE(SUM("__dp_s0"), 0) AS "__dp_s0"
FROM __dp_contrib
