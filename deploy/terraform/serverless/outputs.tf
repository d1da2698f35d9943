output "endpoint" {
  description = "Endpoint host. Use it in upstream.url as rediss://HOST:6379 with upstream.mode = \"cluster\"."
  value       = aws_elasticache_serverless_cache.this.endpoint[0].address
}

output "upstream_url" {
  description = "upstream.url for cacheside's proxy.toml."
  value       = "rediss://${aws_elasticache_serverless_cache.this.endpoint[0].address}:${aws_elasticache_serverless_cache.this.endpoint[0].port}"
}

output "iam_settings" {
  description = "The [upstream.iam] keys of cacheside's proxy.toml."
  value = {
    region     = data.aws_region.current.name
    cache_name = aws_elasticache_serverless_cache.this.name
    user_id    = aws_elasticache_user.cacheside.user_id
    serverless = true
  }
}

output "iam_role_arn" {
  description = "Role for the eks.amazonaws.com/role-arn annotation of the ServiceAccount (empty without oidc_provider_arn)."
  value       = one(aws_iam_role.connect[*].arn)
}

output "connect_policy_json" {
  description = "IAM policy granting elasticache:Connect on the cache and the user, for a role made elsewhere."
  value       = data.aws_iam_policy_document.connect.json
}

output "security_group_id" {
  description = "Security group of the cache."
  value       = aws_security_group.cache.id
}
