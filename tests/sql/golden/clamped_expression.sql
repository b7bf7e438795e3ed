WITH "__dp_rows" AS (
  SELECT
    "visits"."user_id" AS "__dp_unit",
    CASE
      WHEN TRY(
        LEAST(
          CAST(CASE
            WHEN duration_s IS NULL OR ISNAN(duration_s)
            THEN NULL
            ELSE LEAST(GREATEST(duration_s, 0.0), 3600.0)
          END AS DOUBLE) / CAST(60 AS DOUBLE),
          30
        )
      ) IS NULL
      OR ISNAN(
        TRY(
          LEAST(
            CAST(CASE
              WHEN duration_s IS NULL OR ISNAN(duration_s)
              THEN NULL
              ELSE LEAST(GREATEST(duration_s, 0.0), 3600.0)
            END AS DOUBLE) / CAST(60 AS DOUBLE),
            30
          )
        )
      )
      THEN NULL
      ELSE LEAST(
        GREATEST(
          TRY(
            LEAST(
              CAST(CASE
                WHEN duration_s IS NULL OR ISNAN(duration_s)
                THEN NULL
                ELSE LEAST(GREATEST(duration_s, 0.0), 3600.0)
              END AS DOUBLE) / CAST(60 AS DOUBLE),
              30
            )
          ),
          0.0
        ),
        30.0
      )
    END AS "__dp_v0"
  FROM visits
  WHERE
    NOT "visits"."user_id" IS NULL
), "__dp_groups" AS (
  SELECT
    "__dp_unit",
    COALESCE(SUM("__dp_v0"), 0) AS "__dp_s0"
  FROM __dp_rows
  GROUP BY
    "__dp_unit"
), "__dp_contrib" AS (
  SELECT
    CAST(ROUND(LEAST("__dp_s0", 600) * CAST(2.0 AS DOUBLE)) AS BIGINT) AS "__dp_s0"
  FROM __dp_groups
)
SELECT
  COALESCE(SUM("__dp_s0"), 0) AS "__dp_s0"
FROM __dp_contrib
