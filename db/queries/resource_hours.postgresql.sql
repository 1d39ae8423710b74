-- name: resource_hours
-- description: Node-, GPU- and CPU-hours spent per site and stage (all attempts, failed ones included).
-- param: campaign = null
SELECT a.site, s.name AS stage, s.kind AS stage_kind, COUNT(*) AS attempts,
       ROUND(SUM(a.nodes * EXTRACT(EPOCH FROM COALESCE(a.ended_at, a.started_at) - a.started_at) / 3600.0)::numeric, 6)::float AS node_hours,
       ROUND(SUM(a.gpus * EXTRACT(EPOCH FROM COALESCE(a.ended_at, a.started_at) - a.started_at) / 3600.0)::numeric, 6)::float AS gpu_hours,
       ROUND(SUM(a.cpus * EXTRACT(EPOCH FROM COALESCE(a.ended_at, a.started_at) - a.started_at) / 3600.0)::numeric, 6)::float AS cpu_hours
FROM attempts a JOIN tasks t ON t.id = a.task_id JOIN stages s ON s.id = t.stage_id
     JOIN campaigns c ON c.id = t.campaign_id
WHERE a.started_at IS NOT NULL AND (CAST(:campaign AS TEXT) IS NULL OR c.name = :campaign)
GROUP BY a.site, s.name, s.kind
ORDER BY a.site, s.name
