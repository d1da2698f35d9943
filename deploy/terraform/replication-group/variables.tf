variable "name" {
  description = "Replication group id; also names the subnet group, parameter group and security group."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the cache and the app."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets, in at least two availability zones (Multi-AZ)."
  type        = list(string)
}

variable "app_security_group_id" {
  description = "Security group of the app's pods (or nodes): the only source allowed to reach Redis."
  type        = string
}

variable "auth_token_secret_id" {
  description = "Secrets Manager secret (name or ARN) whose value is the AUTH token: 16-128 printable characters."
  type        = string
}

variable "engine" {
  description = "\"redis\" or \"valkey\"."
  type        = string
  default     = "redis"
}

variable "engine_version" {
  description = "Engine version; 7.0 or later (IAM authentication needs Redis OSS 7.0 or Valkey 7.2)."
  type        = string
  default     = "7.1"
}

variable "parameter_group_family" {
  description = "Parameter group family matching the engine version, e.g. redis7 or valkey8."
  type        = string
  default     = "redis7"
}

variable "node_type" {
  description = "Node instance type."
  type        = string
  default     = "cache.t4g.small"
}

variable "num_cache_clusters" {
  description = "Nodes: one primary and the rest replicas, spread over the subnets' zones."
  type        = number
  default     = 2

  validation {
    condition     = var.num_cache_clusters >= 2
    error_message = "Multi-AZ with automatic failover needs at least 2 nodes (a primary and a replica)."
  }
}

variable "snapshot_retention_limit" {
  description = "Days of automatic snapshots; 0 turns them off (a cache that can be rebuilt)."
  type        = number
  default     = 1
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
