output "primary_endpoint" {
  description = "Primary endpoint host: follows a failover. Use it in upstream.url."
  value       = aws_elasticache_replication_group.this.primary_endpoint_address
}

output "reader_endpoint" {
  description = "Reader endpoint host (replicas)."
  value       = aws_elasticache_replication_group.this.reader_endpoint_address
}

output "upstream_url" {
  description = "upstream.url for cacheside's proxy.toml (the AUTH token goes in upstream.password_file)."
  value       = "rediss://${aws_elasticache_replication_group.this.primary_endpoint_address}:6379"
}

output "auth_token_secret_arn" {
  description = "Secrets Manager secret holding the AUTH token, to sync into the cacheside-credentials Secret."
  value       = data.aws_secretsmanager_secret_version.auth_token.arn
}

output "security_group_id" {
  description = "Security group of the cache."
  value       = aws_security_group.cache.id
}
