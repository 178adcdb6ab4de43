"""sitok.models"""
