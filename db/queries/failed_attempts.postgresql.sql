-- name: failed_attempts
-- description: Failed attempts grouped by exit cause, site and task kind, with the latest error.
-- param: campaign = null
SELECT a.exit_cause, a.site, t.kind, COUNT(*) AS attempts, MAX(a.ended_at) AS last_seen,
       (SELECT a2.error FROM attempts a2 JOIN tasks t2 ON t2.id = a2.task_id
        WHERE a2.exit_cause = a.exit_cause AND a2.site = a.site AND t2.kind = t.kind
        ORDER BY a2.ended_at DESC LIMIT 1) AS last_error
FROM attempts a JOIN tasks t ON t.id = a.task_id JOIN campaigns c ON c.id = t.campaign_id
WHERE a.exit_cause IS NOT NULL AND a.exit_cause <> 'ok' AND (CAST(:campaign AS TEXT) IS NULL OR c.name = :campaign)
GROUP BY a.exit_cause, a.site, t.kind
ORDER BY attempts DESC
