-- name: resource_hours
-- description: Node-, GPU- and CPU-hours spent per site and stage (all attempts, failed ones included).
-- param: campaign = null
SELECT a.site, s.name AS stage, s.kind AS stage_kind, COUNT(*) AS attempts,
       ROUND(SUM(a.nodes * (julianday(COALESCE(a.ended_at, a.started_at)) - julianday(a.started_at)) * 24.0), 6) AS node_hours,
       ROUND(SUM(a.gpus * (julianday(COALESCE(a.ended_at, a.started_at)) - julianday(a.started_at)) * 24.0), 6) AS gpu_hours,
       ROUND(SUM(a.cpus * (julianday(COALESCE(a.ended_at, a.started_at)) - julianday(a.started_at)) * 24.0), 6) AS cpu_hours
FROM attempts a JOIN tasks t ON t.id = a.task_id JOIN stages s ON s.id = t.stage_id
     JOIN campaigns c ON c.id = t.campaign_id
WHERE a.started_at IS NOT NULL AND (:campaign IS NULL OR c.name = :campaign)
GROUP BY a.site, s.name, s.kind
ORDER BY a.site, s.name
