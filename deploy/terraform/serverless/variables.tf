variable "name" {
  description = "Serverless cache name (the IAM token signs it, lowercase); also names the security group and user group."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the cache and the app."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets, in two or three availability zones."
  type        = list(string)
}

variable "app_security_group_id" {
  description = "Security group of the app's pods (or nodes): the only source allowed to reach the cache."
  type        = string
}

variable "engine" {
  description = "\"valkey\" or \"redis\"."
  type        = string
  default     = "valkey"
}

variable "major_engine_version" {
  description = "Major engine version: 7 or 8 for valkey, 7 for redis."
  type        = string
  default     = "8"
}

variable "iam_user_id" {
  description = "ElastiCache user that cacheside authenticates as with IAM (upstream.iam.user_id); its name equals its id."
  type        = string
  default     = "cacheside"
}

variable "max_data_storage_gb" {
  description = "Upper limit of stored data, in GB."
  type        = number
  default     = 10
}

variable "max_ecpu_per_second" {
  description = "Upper limit of ElastiCache Processing Units per second."
  type        = number
  default     = 5000
}

variable "oidc_provider_arn" {
  description = "The EKS cluster's IAM OIDC provider ARN, for an IRSA role; empty: no role is made here."
  type        = string
  default     = ""
}

variable "service_account" {
  description = "namespace/name of the Kubernetes ServiceAccount that assumes the IRSA role."
  type        = string
  default     = "default/app"
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
