WITH "__dp_rows" AS (
  SELECT
    "a"."user_id" AS "__dp_unit",
    1 AS "__dp_v0"
  FROM (
    SELECT
      *
    FROM visits
    QUALIFY
      ROW_NUMBER() OVER (
        PARTITION BY "user_id"
        ORDER BY HASH(
          "user_id",
          $salt,
          "visit_id",
          "user_id",
          "visit_date",
          "country",
          "device",
          "age",
          "duration_s",
          "spend",
          "converted"
        )
      ) <= 20
  ) AS a
  JOIN (
    SELECT
      *
    FROM visits
    QUALIFY
      ROW_NUMBER() OVER (
        PARTITION BY "user_id"
        ORDER BY HASH(
          "user_id",
          $salt,
          "visit_id",
          "user_id",
          "visit_date",
          "country",
          "device",
          "age",
          "duration_s",
          "spend",
          "converted"
        )
      ) <= 20
  ) AS b
    ON a.user_id = b.user_id AND a.visit_id = b.visit_id
  WHERE
    NOT "a"."user_id" IS NULL
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
